"""Progress lines for the slow steps of a session (an install, a server start), like pip's own: one line
when the step starts, one every ``every_s`` seconds with the time elapsed, one when it ends."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

Progress = Callable[[str], None]


@contextlib.contextmanager
def ticking(progress: Progress, label: str, every_s: float = 15.0, t0: float | None = None) -> Iterator[None]:
    """Say ``label ...`` now and ``label ... N s elapsed`` every ``every_s`` seconds until the block ends."""
    start = time.monotonic() if t0 is None else t0
    progress(f"{label} ...")
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(every_s):
            progress(f"{label} ... {time.monotonic() - start:.0f} s elapsed")

    thread = threading.Thread(target=tick, daemon=True, name="vllm-compat-progress")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1)
