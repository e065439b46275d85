"""The pytest layer: options, markers, fixtures and hook wiring. The run's state and hooks are a
:class:`~pytest_vllm_compat.compat_plugin.CompatPlugin` registered here; the work is done in library modules
(session, server, environments, registry, classify, results)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from . import newhooks, options
from .allure_support import AllureHooks
from .capabilities import VersionCaps, capabilities
from .client import VLLMClient
from .compat_plugin import CompatPlugin
from .configure import build_plugin, load_models
from .environments import VLLMEnvironment, server_help
from .fixture_types import DriftSettings, ItemState, OpenAISDK, RecordExtras, ServerFactory
from .markers import register_markers, server_marker
from .outcomes import NOT_APPLICABLE_PREFIX
from .server import VLLMServer
from .session import Target

STATE = pytest.StashKey[CompatPlugin]()
PLUGIN_NAME = "vllm_compat_run"

__all__ = ["STATE"]


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(newhooks)


def pytest_configure(config: pytest.Config) -> None:
    settings = options.resolve_settings(config)
    models, registry_error = load_models(settings)
    register_markers(config, (f for m in models for f in m.families))
    plugin = build_plugin(config, settings, models, registry_error)
    config.stash[STATE] = plugin
    config.pluginmanager.register(plugin, PLUGIN_NAME)
    config.pluginmanager.register(AllureHooks(), "vllm_compat_allure")


# --- fixtures -----------------------------------------------------------------------------------

def _plugin(request: pytest.FixtureRequest) -> CompatPlugin:
    return request.config.stash[STATE]


def _item_state(request: pytest.FixtureRequest) -> ItemState:
    node = request.node
    assert isinstance(node, pytest.Item)
    return _plugin(request).item_state(node)


@pytest.fixture
def vllm_target(request: pytest.FixtureRequest) -> Target:
    """The model x vLLM version this test runs against (parametrized from --vllm and the registry)."""
    target: Target = request.param
    _item_state(request).target = target
    plugin = _plugin(request)
    reason = plugin.unmet(target)
    if reason:
        pytest.skip(NOT_APPLICABLE_PREFIX + reason)
    assert isinstance(request.node, pytest.Item)
    plugin.target_ready(request.node, target)
    return target


@pytest.fixture
def vllm_env(request: pytest.FixtureRequest, vllm_target: Target) -> VLLMEnvironment:
    """The provisioned environment (interpreter + provenance) of the version under test."""
    return _plugin(request).session.env_for(vllm_target.line)


@pytest.fixture
def vllm_caps(vllm_target: Target, vllm_env: VLLMEnvironment) -> VersionCaps:
    """The capability-table row of the version under test (pytest_vllm_compat.capabilities.VersionCaps)."""
    return capabilities(vllm_env.vllm_version)


@pytest.fixture
def vllm_help(request: pytest.FixtureRequest, vllm_env: VLLMEnvironment) -> str:
    """The installed version's API-server ``--help`` text (cached per environment)."""
    return server_help(vllm_env, _plugin(request).session.entry_point(vllm_env.version))


@pytest.fixture
def vllm_model_path(request: pytest.FixtureRequest, vllm_target: Target, vllm_env: VLLMEnvironment) -> str:
    """The model handed to --model: a generated tiny model, a preflighted local dir, or a hub id."""
    return _plugin(request).session.model_path(vllm_target.model, vllm_env)


@pytest.fixture
def vllm_server_factory(request: pytest.FixtureRequest, vllm_target: Target, vllm_model_path: str) -> ServerFactory:
    """Start (or reuse) a server for this test's target with extra args/env; ``try_start`` for one that may fail."""
    return ServerFactory(request, _plugin(request).session, vllm_target, vllm_model_path, _item_state(request))


@pytest.fixture
def vllm_server(request: pytest.FixtureRequest, vllm_server_factory: ServerFactory) -> VLLMServer:
    """A running server for this test's target (+ the ``vllm_server`` marker's args/env), shared by spec."""
    assert isinstance(request.node, pytest.Item)
    _, marker = server_marker(request.node)
    args: list[str] = []
    env: dict[str, str] = {}
    if marker is not None:
        builder: Callable[..., tuple[Sequence[str], dict[str, str]]] | None = marker.kwargs.get("builder")
        if builder is not None:
            caps = request.getfixturevalue("vllm_caps")
            b_args, b_env = builder(caps, vllm_server_factory.target)
            args += list(b_args)
            env.update(b_env)
        args += list(marker.kwargs.get("args", ()))
        env.update(marker.kwargs.get("env", {}))
    return vllm_server_factory(args, env, label=marker.kwargs.get("label", "") if marker else "",
                               eager_ok=bool(marker.kwargs.get("eager_ok", False)) if marker else False)


@pytest.fixture
def vllm_client(vllm_server: VLLMServer) -> Iterator[VLLMClient]:
    """A client for ``vllm_server`` (OpenAI-compatible API, the server's API key, the served model name)."""
    client = VLLMClient(vllm_server.base_url, vllm_server.api_key, vllm_server.served_model_name)
    yield client
    client.close()


@pytest.fixture
def vllm_openai(vllm_server: VLLMServer) -> Iterator[OpenAISDK]:
    """The official OpenAI Python SDK bound to ``vllm_server`` (a dependency of the plugin), so "works with the
    SDK users use" is tested, not assumed. Without it the installation is broken: the test errors, it is never
    skipped (a missing package is not a property of the platform)."""
    try:
        import openai
    except ImportError as e:
        pytest.fail(f"the openai package cannot be imported ({e}); it is a dependency of pytest-vllm-compat: "
                    "reinstall it (pip install pytest-vllm-compat)", pytrace=False)
    client = openai.OpenAI(base_url=vllm_server.base_url + "/v1", api_key=vllm_server.api_key, max_retries=0,
                           timeout=120.0)
    yield OpenAISDK(client, vllm_server.served_model_name)
    client.close()


@pytest.fixture
def vllm_drift(request: pytest.FixtureRequest) -> DriftSettings:
    """``--vllm-golden``, ``--vllm-save-golden`` and ``--vllm-drift-tolerance`` as resolved."""
    s = _plugin(request).settings
    return DriftSettings(s.golden, s.save_golden, s.drift_tolerance)


@pytest.fixture
def vllm_record(request: pytest.FixtureRequest) -> RecordExtras:
    """Metrics (and a precise feature id) the test wants in its result record."""
    st = _item_state(request)
    return RecordExtras(metrics=st.metrics, state=st)
