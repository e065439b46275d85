"""After a test's call: did one of its servers die or stop answering during it? The test then fails with what
happened, when, the root cause from the log and the log around the first error; the pool counts the crash."""

from __future__ import annotations

import pytest

from .fixture_types import ItemState
from .results import log_since, root_cause_suffix
from .server import ServerError, ServerStartupError
from .session import CompatSession


def server_error_text(err: ServerError) -> str:
    """A test's report when its server could not start or is not available (instead of a traceback)."""
    kind = "failed to start" if isinstance(err, ServerStartupError) else "is not available"
    text = f"vLLM server {kind}: {err}"
    if err.log_path:
        text += f"\nserver log: {err.log_path}"
    if err.log_excerpt:
        text += "\n--- server log around the first error ---\n" + err.log_excerpt
    return text


def check_servers_after_call(st: ItemState, session: CompatSession, rep: pytest.TestReport, test_id: str) -> None:
    """Fail the test when its server died during it, with the log around the first error."""
    for server in st.servers:
        died = server.died_at is not None and not server.stopping
        engine_dead = False
        if not died and rep.failed and not server.stopping and not server.healthy(timeout=2.0):
            # A killed process is reaped by the watcher thread within milliseconds; give it a moment.
            if server.wait_for_death(1.0):
                died = True
            else:
                engine_dead = True  # API server up, engine gone (/health 500/503)
        if not (died or engine_dead):
            continue
        if died:
            server.drain_log()
        log_slice = log_since(server.log_path, st.log_offsets.get(id(server), 0))
        excerpt = server.log_excerpt(text=log_slice)
        when = ""
        if died and st.call_started is not None and server.died_at is not None:
            when = f" ({max(0.0, server.died_at - st.call_started):.1f} s into the test)"
        what = (f"exit code {server.exit_code}" if died else "the engine is dead: /health is not 200")
        summary = f"vLLM server died during this test: {what}{when}"
        if server.hung_after_s is not None:
            summary = (f"vLLM server stopped responding during this test: /health did not answer for "
                       f"{server.hung_after_s:.1f} s (--vllm-hang-timeout={session.hang_timeout:g}); "
                       f"the plugin killed it{when}")
        summary += root_cause_suffix(log_slice)
        original = str(rep.longrepr) if rep.failed and rep.longrepr else ""
        rep.outcome = "failed"
        rep.longrepr = (f"{summary}\nserver log: {server.log_path}\n--- server log around the first error ---\n"
                        f"{excerpt}\n--- the test's own error ---\n{original[-6000:]}")
        st.crash_note = summary
        session.pool.note_crash(server.spec, server, test_id=st.nodeid or test_id, summary=summary,
                                log_excerpt=excerpt)
        if engine_dead:
            server.stop()  # next test of this spec gets a fresh server
        break
