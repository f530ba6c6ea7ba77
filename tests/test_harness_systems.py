"""Systems under test behind one interface: a user's config mapped onto the fakes, any
OpenAI-compatible URL, the openai client; the same scenario and budget for each."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime.errors import ConfigError
from runtime.harness import (
    LLMRuntime,
    OpenAIClient,
    OpenAICompatibleURL,
    Scenario,
    Target,
    parse_scenario,
    run_scenario,
    score,
    system_from_spec,
)
from runtime.harness.scenario import BudgetSpec
from runtime.harness.systems import TargetEndpoint

pytestmark = pytest.mark.anyio

_SCENARIO = """
name = "outage"
duration = 12
[[endpoints]]
name = "primary"
port = {port}
[[endpoints]]
name = "backup"
dialect = "openai-compatible"
[[faults]]
endpoint = "primary"
at = 3
for = 4
outage = 503
[load]
rate = 5
[runtime.breaker]
failure_threshold = 2
open_for = 2
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scenario(port: int = 0) -> Scenario:
    return parse_scenario(tomllib.loads(_SCENARIO.format(port=port)))


async def test_user_config_is_mapped_onto_the_fakes(span_exporter: InMemorySpanExporter, tmp_path: Path) -> None:
    """A runtime.toml with its own names and policies: endpoints paired with the fakes in
    priority order, keys replaced, the mapping stated; the runtime's names become the fakes'."""
    config = tmp_path / "runtime.toml"
    config.write_text(
        '[[endpoints]]\nname = "main"\nprovider = "openai"\nmodel = "gpt-4o-mini"\napi_key_env = "NOPE_KEY"\npriority = 1\n'
        "[endpoints.breaker]\nfailure_threshold = 2\nopen_for = 2\n"
        '[[endpoints]]\nname = "spare"\nprovider = "openai-compatible"\nmodel = "m"\nbase_url = "http://10.0.0.1/v1"\npriority = 2\n'
    )
    r = score(await run_scenario(_scenario(), LLMRuntime(config), seed=1))
    assert r.system == "llm-runtime[runtime.toml]"
    assert "main (openai, priority 1) -> fake primary" in r.mapping and "spare (openai-compatible, priority 2) -> fake backup" in r.mapping
    assert r.failed == 0 and r.endpoints["backup"].served > 0
    assert {t.endpoint for t in r.series.transitions} <= {"primary", "backup"}  # the fakes' names


def test_config_with_more_endpoints_than_fakes_is_refused(tmp_path: Path) -> None:
    """More configured endpoints than the scenario has fakes: refused, naming the key."""
    config = tmp_path / "big.toml"
    config.write_text("".join(f'[[endpoints]]\nname = "e{i}"\nprovider = "ollama"\nmodel = "m"\n' for i in range(3)))
    system = LLMRuntime(config)
    with pytest.raises(ConfigError) as info:
        system._build(_target())
    assert info.value.key == "endpoints"


def _target() -> Target:
    eps = [TargetEndpoint(n, "openai", "m", f"http://127.0.0.1:1/{n}", i) for i, n in enumerate(("a", "b"), 1)]
    return Target(endpoints=eps, budget=BudgetSpec())


async def test_openai_compatible_url_reaches_fakes_on_fixed_ports(span_exporter: InMemorySpanExporter) -> None:
    """url=...: requests go to the URL (here the primary fake itself, on its fixed port): the
    outage shows as failures because nothing behind the URL fails over."""
    port = _free_port()
    system = system_from_spec(f"url=http://127.0.0.1:{port}/v1,model=gpt-4o-mini")
    assert isinstance(system, OpenAICompatibleURL) and system.model == "gpt-4o-mini"
    r = score(await run_scenario(_scenario(port), system, seed=1))
    window = r.windows[0]  # a request begun just before the window closes may still meet it
    assert set(r.errors) == {"HTTP 503"} and window.requests <= r.failed <= window.requests + 1
    assert r.endpoints["primary"].served == r.succeeded > 0
    assert any(f"127.0.0.1:{port}" in line for line in r.mapping)


async def test_openai_client_with_retries_and_one_fallback(span_exporter: InMemorySpanExporter) -> None:
    """The openai client: its own retries on the primary, then the fallback client: no failure."""
    r = score(await run_scenario(_scenario(), OpenAIClient(), seed=1))
    assert r.failed == 0 and r.endpoints["backup"].served > 0
    assert r.mapping[0].startswith("client for primary: max_retries 2")


def test_bad_url_is_refused() -> None:
    """A url= that is not http(s): a ConfigError naming the key."""
    with pytest.raises(ConfigError) as info:
        system_from_spec("url=ftp://x")
    assert info.value.key == "system.url"
