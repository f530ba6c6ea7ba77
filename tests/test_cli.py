"""The ``llm-runtime`` command, in process, against fault-injecting local endpoints.

``main()`` runs its own event loop (``anyio.run``), so the command tests are plain
synchronous tests and the local endpoints serve from a second thread (an anyio blocking
portal). The demo runs on the virtual clock: its 10-20 s timeline takes about a second.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console

from runtime.cli import CONFIG_ENV, find_config, main
from runtime.config import parse_config
from runtime.demo import DEMO_FLEET, DemoSummary, _Tally, render_view, run_demo, timeline
from runtime.endpoint.actor import EndpointStatus
from runtime.testing import FaultyEndpoint, LocalEndpoints

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-test-7f3a9c-never-print-me"
KEY_VAR = "LLM_RUNTIME_TEST_KEY"


class Fleet:
    """Local endpoints served from a background thread, reachable from sync tests."""

    def __init__(self, portal: BlockingPortal, endpoints: LocalEndpoints) -> None:
        self.portal = portal
        self.endpoints = endpoints

    def __getitem__(self, name: str) -> FaultyEndpoint:
        return self.endpoints[name]

    def refuse(self, name: str) -> None:
        """Make ``name`` refuse connections (runs in the endpoints' loop)."""
        self.portal.call(self.endpoints[name].faults.refuse)


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    """An OpenAI-style primary (echoing the prompt) and an Anthropic-style backup, in a thread."""
    endpoints = LocalEndpoints(
        FaultyEndpoint("openai", name="primary", echo=True),
        FaultyEndpoint("anthropic", name="backup", text="answer from the backup"),
    )
    with start_blocking_portal() as portal:
        portal.call(endpoints.start)
        try:
            yield Fleet(portal, endpoints)
        finally:
            portal.call(endpoints.aclose)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No config from the developer's shell or working directory leaks into a test."""
    for var in (
        CONFIG_ENV, "LLM_BACKEND", "OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT",
        "ANTHROPIC_API_KEY", "DEEPSEEK_API_KEY", "OLLAMA_BASE_URL", "OLLAMA_HOST", "OLLAMA_MODEL",
        "CUSTOM_LLM_URL", "CUSTOM_LLM_MODEL", "CUSTOM_LLM_API_KEY", "CUSTOM_LLM_HEADERS",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(KEY_VAR, SECRET)
    monkeypatch.chdir(tmp_path)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def endpoint_toml(name: str, provider: str, base_url: str, **extra: Any) -> str:
    """One ``[[endpoints]]`` table; the key comes from KEY_VAR unless overridden."""
    fields: dict[str, Any] = {
        "name": name, "provider": provider, "model": f"{provider}-model", "base_url": base_url,
        "api_key_env": KEY_VAR, "timeout": 5.0, **extra,
    }
    lines = ["[[endpoints]]"]
    tables = []
    for key, value in fields.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    for key, table in tables:
        lines.append(f"[endpoints.{key}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def write_config(path: Path, *tables: str, top: str = "") -> Path:
    path.write_text(top + "\n" + "\n".join(tables))
    return path


@pytest.fixture
def config(fleet: Fleet, tmp_path: Path) -> Path:
    """A config file naming both local endpoints, primary first, health loop off."""
    return write_config(
        tmp_path / "fleet.toml",
        endpoint_toml("primary", "openai", fleet["primary"].base_url, priority=1, groups=["fast"], health={"enabled": False}),
        endpoint_toml("backup", "anthropic", fleet["backup"].base_url, priority=2, groups=["careful"], health={"enabled": False}),
        top="timeout = 10.0\n[retry]\nbackoff_base = 0.01\n",
    )


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``main(argv)``: exit status, stdout, stderr; asserts the key never appears."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert SECRET not in out and SECRET not in err
    return code, out, err


def assert_one_clean_line(err: str) -> None:
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


# --- chat -------------------------------------------------------------------------------------------


def test_chat_prints_the_reply_text(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`chat PROMPT` prints the reply's text and a newline, and exits 0."""
    code, out, err = run(capsys, "chat", "hello there", "--config", str(config))
    assert (code, out, err) == (0, "hello there\n", "")


def test_chat_reads_the_prompt_from_stdin(config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`chat -` reads the whole prompt from standard input."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("a prompt from a pipe\n"))
    code, out, _ = run(capsys, "chat", "-", "--config", str(config))
    assert code == 0 and out == "a prompt from a pipe\n"


def test_chat_sends_system_prompt_and_max_tokens(config: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    """--system becomes the first message and --max-tokens the provider's token limit."""
    code, _, _ = run(capsys, "chat", "hi", "--system", "be brief", "--max-tokens", "7", "--config", str(config))
    body = fleet["primary"].last_request
    assert code == 0
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert body["max_completion_tokens"] == 7


def test_chat_model_routes_by_group(config: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    """--model picks the endpoints serving that group, even a lower-priority one."""
    code, out, _ = run(capsys, "chat", "hi", "--model", "careful", "--config", str(config))
    assert (code, out) == (0, "answer from the backup\n")
    assert fleet["primary"].stats.requests == 0


def test_chat_stream_prints_chunks_as_they_arrive(config: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    """--stream prints the streamed text and ends the line; the endpoint served a stream."""
    code, out, _ = run(capsys, "chat", "streamed words here", "--stream", "--config", str(config))
    assert (code, out) == (0, "streamed words here\n")
    assert fleet["primary"].stats.streams == 1


def test_chat_json_is_the_whole_reply(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints every reply field, with usage and the attempt trail."""
    code, out, _ = run(capsys, "chat", "hi json", "--json", "--config", str(config))
    reply = json.loads(out)
    assert code == 0
    assert reply["text"] == "hi json" and reply["endpoint"] == "primary" and reply["provider"] == "openai"
    assert reply["usage"]["output_tokens"] == 2 and reply["cached"] is False
    assert [(a["endpoint"], a["error"]) for a in reply["attempts"]] == [("primary", None)]


def test_chat_json_after_failover_names_each_attempts_error(
    config: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused primary (tried once more after its backoff, the preferred tier's wait): the backup
    answers and the JSON trail shows the error's class and message."""
    fleet.refuse("primary")
    code, out, _ = run(capsys, "chat", "hi", "--json", "--stream", "--config", str(config))
    reply = json.loads(out)
    assert code == 0 and reply["endpoint"] == "backup" and reply["text"] == "answer from the backup"
    *failed, second = reply["attempts"]
    assert len(failed) == 2
    for first in failed:
        assert first["endpoint"] == "primary" and first["error"]["type"] == "ConnectionFailed"
        assert "primary" in first["error"]["message"]
    assert second == {"endpoint": "backup", "error": None, "elapsed": second["elapsed"], "hedge": False, "cancelled": False,
                      "recovery": None}


def test_chat_stream_cut_midway_keeps_the_text_and_reports_it(
    config: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stream cut after two words: those words and a newline on stdout, StreamInterrupted on stderr, exit 1."""
    fleet.portal.call(setattr, fleet["primary"].faults, "cut_after", 2)
    code, out, err = run(capsys, "chat", "one two three four", "--stream", "--config", str(config))
    assert (code, out) == (1, "one two\n")
    assert err.startswith("llm-runtime: StreamInterrupted:")
    assert_one_clean_line(err)


def test_chat_unreachable_endpoint_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A closed port: exit 1 and one line naming AllEndpointsFailed and ConnectionFailed, no traceback."""
    path = write_config(tmp_path / "down.toml", endpoint_toml("down", "openai", f"http://127.0.0.1:{closed_port()}/v1"),
                        top="[retry]\nbackoff_base = 0.01\n")
    code, out, err = run(capsys, "chat", "hi", "--config", str(path))
    assert code == 1 and out == ""
    assert_one_clean_line(err)
    assert err.startswith("llm-runtime: AllEndpointsFailed:") and "ConnectionFailed" in err


def test_chat_json_failure_prints_the_error_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json on failure: the error and its attempts as JSON on stdout, one line on stderr."""
    path = write_config(tmp_path / "down.toml", endpoint_toml("down", "openai", f"http://127.0.0.1:{closed_port()}/v1"),
                        top="[retry]\nmax_attempts = 1\n")
    code, out, err = run(capsys, "chat", "hi", "--json", "--config", str(path))
    error = json.loads(out)["error"]
    assert code == 1 and error["type"] == "AllEndpointsFailed"
    assert [a["error"]["type"] for a in error["attempts"]] == ["ConnectionFailed"]
    assert_one_clean_line(err)


def test_chat_missing_key_variable_says_which(fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The key variable unset: nothing is sent, exit 1, and the line names the variable."""
    path = write_config(tmp_path / "nokey.toml",
                        endpoint_toml("primary", "openai", fleet["primary"].base_url, api_key_env="LLM_RUNTIME_UNSET_KEY"))
    code, _, err = run(capsys, "chat", "hi", "--config", str(path), "--timeout", "2")
    assert code == 1
    assert_one_clean_line(err)
    assert "NoEndpointAvailable" in err and "LLM_RUNTIME_UNSET_KEY is not set" in err
    assert fleet["primary"].stats.requests == 0


def test_chat_empty_prompt_is_a_usage_error(config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty prompt (here from stdin) exits 2 before building a runtime."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("  \n"))
    code, _, err = run(capsys, "chat", "-", "--config", str(config))
    assert code == 2 and "empty" in err


def test_chat_invalid_option_value_is_a_usage_error(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad request value the runtime refuses (temperature 5) exits 1 with one line."""
    code, _, err = run(capsys, "chat", "hi", "--temperature", "5", "--config", str(config))
    assert code == 1 and "InvalidRequest" in err
    assert_one_clean_line(err)


# --- configuration discovery ------------------------------------------------------------------------


def test_find_config_order(tmp_path: Path) -> None:
    """--config wins over $LLM_RUNTIME_CONFIG, which wins over ./runtime.toml; else the environment."""
    local = tmp_path / "runtime.toml"
    assert find_config(None, {}, tmp_path) is None
    local.write_text("")
    assert find_config(None, {}, tmp_path) == local
    assert find_config(None, {CONFIG_ENV: "/etc/llm.toml"}, tmp_path) == Path("/etc/llm.toml")
    assert find_config("mine.toml", {CONFIG_ENV: "/etc/llm.toml"}, tmp_path) == Path("mine.toml")


def test_config_from_environment_variable(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --config, the file named by LLM_RUNTIME_CONFIG is used."""
    monkeypatch.setenv(CONFIG_ENV, str(config))
    assert run(capsys, "chat", "via env var")[:2] == (0, "via env var\n")


def test_config_from_working_directory(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --config or the variable, ./runtime.toml is used."""
    (tmp_path / "runtime.toml").write_text(config.read_text())
    assert run(capsys, "chat", "via cwd")[:2] == (0, "via cwd\n")


def test_config_from_provider_variables(fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """No file anywhere: the runtime comes from LLM_BACKEND and the provider's variables."""
    monkeypatch.setenv("LLM_BACKEND", "openai-compatible")
    monkeypatch.setenv("CUSTOM_LLM_URL", fleet["primary"].base_url)
    monkeypatch.setenv("CUSTOM_LLM_MODEL", "any-model")
    assert run(capsys, "chat", "via variables")[:2] == (0, "via variables\n")


def test_no_configuration_anywhere_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing configured: exit 2 and one line saying what to set."""
    code, _, err = run(capsys, "status")
    assert code == 2 and "ConfigError" in err and "LLM_BACKEND" in err
    assert_one_clean_line(err)


def test_named_config_file_missing(capsys: pytest.CaptureFixture[str]) -> None:
    """--config naming a file that does not exist: exit 2, one line."""
    code, _, err = run(capsys, "chat", "hi", "--config", "nowhere.toml")
    assert code == 2 and "cannot read nowhere.toml" in err
    assert_one_clean_line(err)


# --- status -----------------------------------------------------------------------------------------


def test_status_probes_every_endpoint(config: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    """Both endpoints answer their probe: a row each (provider, model, health, latency), exit 0."""
    code, out, _ = run(capsys, "status", "--config", str(config))
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("primary", "backup"))}
    assert rows["primary"][1:4] == ["openai", "openai-model", "healthy"]
    assert rows["backup"][1:4] == ["anthropic", "anthropic-model", "healthy"]
    assert all(row[5] == "ms" for row in rows.values())
    assert "2 of 2 endpoints up" in out
    assert fleet["primary"].stats.probes == 1 and fleet["backup"].stats.probes == 1


def test_status_with_one_endpoint_down_reads_down_and_exits_3(
    config: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """One endpoint refusing: its row reads "down" (not degraded), the line below names its URL, exit 3."""
    fleet.refuse("primary")
    code, out, _ = run(capsys, "status", "--config", str(config))
    assert code == 3 and "1 of 2 endpoints up; not up: primary" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("primary"))
    assert row[3] == "down" and "cannot connect" in " ".join(row)
    assert f"primary: could not connect to {fleet['primary'].base_url} (ConnectionFailed:" in out


def test_status_unreachable_endpoint_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A closed port and nothing else: the row says why, and the exit status is 1."""
    path = write_config(tmp_path / "down.toml", endpoint_toml("down", "ollama", f"http://127.0.0.1:{closed_port()}"))
    code, out, err = run(capsys, "status", "--config", str(path))
    assert code == 1 and err == ""
    assert "0 of 1 endpoints up" in out and "could not connect to http://127.0.0.1:" in out


def test_status_json_shape_and_exit_codes(config: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    """`status --json`: one document (counts, exit code, a row per endpoint); exit 0 all up, 3 some, 1 none."""
    code, out, _ = run(capsys, "status", "--json", "--config", str(config))
    doc = json.loads(out)
    assert code == 0 and (doc["up"], doc["total"], doc["exit_code"]) == (2, 2, 0)
    primary = doc["endpoints"][0]
    assert set(primary) == {
        "name", "provider", "model", "state", "breaker", "in_flight", "latency_ms", "last_error", "priority",
        "retry_at", "shared", "url", "health", "up", "probe_ok", "probe_ms", "error",
    }
    assert (primary["name"], primary["health"], primary["up"], primary["url"]) == (
        "primary", "healthy", True, fleet["primary"].base_url,
    )
    fleet.refuse("primary")
    code, out, _ = run(capsys, "status", "--json", "--config", str(config))
    doc = json.loads(out)
    assert code == 3 and doc["exit_code"] == 3 and doc["up"] == 1
    assert doc["endpoints"][0]["health"] == "down" and doc["endpoints"][0]["error"].startswith("ConnectionFailed")
    fleet.refuse("backup")
    code, out, _ = run(capsys, "status", "--json", "--config", str(config))
    assert code == 1 and json.loads(out)["up"] == 0


def test_status_watch_refreshes_until_count(config: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    """`status --watch --count 2` not on a terminal: a summary line per refresh, each a fresh probe."""
    code, out, _ = run(capsys, "status", "--watch", "--count", "2", "--interval", "0.01", "--config", str(config))
    assert code == 0
    assert out.splitlines() == ["2 of 2 endpoints up: primary=healthy backup=healthy"] * 2
    assert fleet["primary"].stats.probes == 2


def test_status_watch_json_is_one_document_per_refresh(config: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    """`status --watch --json`: JSON lines, one status document per refresh; exit code of the last one."""
    fleet.refuse("backup")
    code, out, _ = run(capsys, "status", "--watch", "--json", "--count", "2", "--interval", "0.01", "--config", str(config))
    docs = [json.loads(line) for line in out.splitlines()]
    assert code == 3 and [d["up"] for d in docs] == [1, 1]


def test_status_table_fits_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    """Long names, models and errors: every line of the watch table is at most 80 columns, health intact."""
    from runtime.cli import _Probe, _Row, _status_table

    rows = [
        _Row(
            status=EndpointStatus(
                name=f"endpoint-with-a-long-name-{i}", provider="openai-compatible",
                model="meta-llama/Llama-3.1-70B-Instruct-Turbo", state="degraded", breaker="closed",
                in_flight=12, latency_ms=None, last_error="probe: ConnectionFailed: Cannot connect to host",
            ),
            probe=_Probe(ok=False, latency=None),
            url="http://127.0.0.1:9/v1",
        )
        for i in range(3)
    ]
    console = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    console.print(_status_table(rows, terminal=True, width=80))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert lines and all(len(line) <= 80 for line in lines)
    assert all(" down " in line and "cannot connect" in line for line in lines[2:])


def test_status_missing_key_is_misconfigured_and_not_probed(fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An endpoint whose key variable is unset shows misconfigured and why, without a request."""
    path = write_config(tmp_path / "nokey.toml",
                        endpoint_toml("primary", "openai", fleet["primary"].base_url, api_key_env="LLM_RUNTIME_UNSET_KEY"))
    code, out, _ = run(capsys, "status", "--config", str(path))
    assert code == 1 and "misconfigured" in out and "LLM_RUNTIME_UNSET_KEY" in out
    assert "cannot connect" not in out
    assert fleet["primary"].stats.probes == 0


# --- config check -----------------------------------------------------------------------------------


def test_config_check_prints_resolved_config_with_keys_masked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid file: exit 0, every default filled in, literal keys and secret headers masked, valid TOML."""
    path = write_config(
        tmp_path / "ok.toml",
        endpoint_toml("a", "openai", "http://127.0.0.1:9/v1", headers={"X-Api-Key": SECRET, "X-Team": "red"}),
        endpoint_toml("b", "openai-compatible", "http://127.0.0.1:9/v1", api_key=SECRET, api_key_env=None)
        .replace("api_key_env = null\n", ""),
        top="timeout = 12.5\n",
    )
    code, out, err = run(capsys, "config", "check", str(path))
    assert (code, err) == (0, "")
    assert out.startswith(f"# {path}: valid, 2 endpoint(s)")
    resolved = tomllib.loads(out)
    assert resolved["timeout"] == 12.5 and resolved["retry"]["max_attempts"] == 3
    a, b = resolved["endpoints"]
    assert a["headers"] == {"X-Api-Key": "***", "X-Team": "red"} and "api_key" not in a
    assert a["breaker"]["failure_threshold"] == 5 and a["health"]["interval"] == 15.0
    assert b["api_key"] == "***"
    assert f"# key: from {KEY_VAR} (set)" in out and "# key: given in the file (masked)" in out
    parse_config(resolved)  # what it prints is itself a valid configuration


def test_config_check_unknown_key_names_key_and_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt key: exit 2, and the one line on stderr names the key and the endpoint."""
    path = write_config(tmp_path / "typo.toml", endpoint_toml("primary", "openai", "http://127.0.0.1:9/v1", rpmm=5))
    code, out, err = run(capsys, "config", "check", str(path))
    assert code == 2 and out == ""
    assert_one_clean_line(err)
    assert "ConfigError" in err and "'rpmm'" in err and "'primary'" in err


def test_config_check_mistyped_value_names_key_and_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A value of the wrong type inside a nested table: exit 2, naming the nested key and the endpoint."""
    path = write_config(tmp_path / "type.toml",
                        endpoint_toml("backup", "anthropic", "http://127.0.0.1:9", breaker={"open_for": "soon"}))
    code, _, err = run(capsys, "config", "check", str(path))
    assert code == 2 and "breaker.open_for" in err and "'backup'" in err
    assert_one_clean_line(err)


def test_config_check_unknown_top_level_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt runtime-wide key is refused too."""
    path = write_config(tmp_path / "top.toml", endpoint_toml("a", "ollama", "http://127.0.0.1:9"), top="timout = 5\n")
    code, _, err = run(capsys, "config", "check", str(path))
    assert code == 2 and "'timout'" in err


def test_config_check_reports_missing_key_variable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A key variable that is not set is reported per endpoint; the file itself is valid (exit 0)."""
    path = write_config(tmp_path / "nokey.toml",
                        endpoint_toml("primary", "openai", "http://127.0.0.1:9/v1", api_key_env="LLM_RUNTIME_UNSET_KEY"))
    code, out, _ = run(capsys, "config", "check", str(path))
    assert code == 0
    assert "# key: no API key: environment variable LLM_RUNTIME_UNSET_KEY is not set" in out
    assert "# warning: no API key for 'primary'" in out


def test_config_check_refuses_what_only_the_runtime_or_adapter_knows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Duplicate names and an openai-compatible endpoint without base_url are config errors (exit 2)."""
    dup = write_config(tmp_path / "dup.toml", endpoint_toml("x", "ollama", "http://127.0.0.1:9"),
                       endpoint_toml("x", "ollama", "http://127.0.0.1:9"))
    code, _, err = run(capsys, "config", "check", str(dup))
    assert code == 2 and "duplicate" in err
    nourl = write_config(tmp_path / "nourl.toml", '[[endpoints]]\nname = "v"\nprovider = "openai-compatible"\nmodel = "m"\n')
    code, _, err = run(capsys, "config", "check", str(nourl))
    assert code == 2 and "base_url" in err and "'v'" in err


def test_config_check_invalid_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not TOML: exit 2, one line, no traceback."""
    path = tmp_path / "bad.toml"
    path.write_text("[[endpoints]\nname = ")
    code, _, err = run(capsys, "config", "check", str(path))
    assert code == 2 and "not valid TOML" in err
    assert_one_clean_line(err)


def test_config_check_without_file_uses_discovery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`config check` alone checks ./runtime.toml, or else what the environment configures."""
    monkeypatch.setenv("LLM_BACKEND", "ollama")
    code, out, _ = run(capsys, "config", "check")
    assert code == 0 and out.startswith("# the environment: valid, 1 endpoint(s)") and 'provider = "ollama"' in out
    write_config(tmp_path / "runtime.toml", endpoint_toml("here", "ollama", "http://127.0.0.1:9"))
    code, out, _ = run(capsys, "config", "check")
    assert code == 0 and out.startswith(f"# {tmp_path / 'runtime.toml'}: valid") and 'name = "here"' in out


def test_config_check_shipped_example(capsys: pytest.CaptureFixture[str]) -> None:
    """examples/runtime.toml is valid and covers every provider."""
    code, out, _ = run(capsys, "config", "check", str(ROOT / "examples" / "runtime.toml"))
    providers = {ep["provider"] for ep in tomllib.loads(out)["endpoints"]}
    assert code == 0
    assert providers == {"openai", "azure", "anthropic", "ollama", "deepseek", "openai-compatible", "mock"}


# --- usage ------------------------------------------------------------------------------------------


def test_help_version_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """--help and --version exit 0; a missing or unknown command exits 2."""
    assert main(["--help"]) == 0 and "demo" in capsys.readouterr().out
    assert main(["--version"]) == 0 and "llm-runtime" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["demo", "--rate", "0"]) == 2 and "positive" in capsys.readouterr().err
    assert main(["demo", "--duration", "soon"]) == 2


def test_python_dash_m_runtime_runs_the_command() -> None:
    """`python -m runtime` is the same command (checked in a fresh interpreter)."""
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "config", "check", str(ROOT / "examples" / "runtime.toml")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "valid, 7 endpoint(s)" in done.stdout


# --- demo -------------------------------------------------------------------------------------------
# span_exporter (tests/otel_fixtures.py) installs the session's tracer provider before the
# demo would install one of its own, so the other tests' exporter keeps receiving spans.


def test_timeline_has_every_phase_at_any_duration() -> None:
    """Outage (refused, then 503), 429 storm and slow endpoint, all ending before the run does."""
    for duration in (4.0, 20.0, 60.0):
        script = timeline(duration)
        assert {(f.endpoint, f.kind) for f in script} == {
            ("primary", "refused"), ("primary", "503"), ("backup", "429"), ("local", "slow"),
        }
        assert all(0 < f.start < f.end < duration for f in script)


@pytest.mark.anyio
async def test_demo_has_zero_caller_visible_failures(span_exporter: InMemorySpanExporter) -> None:
    """The whole scripted timeline: every request answered, with failovers and breaker trips to show for it."""
    trace = io.StringIO()
    out = io.StringIO()
    summary = await run_demo(duration=20.0, rate=10.0, seed=3, trace=trace, console=Console(file=out, width=80))
    assert isinstance(summary, DemoSummary)
    assert summary.ok and summary.failed == 0 and summary.errors == {}
    assert summary.requests == summary.succeeded == 200
    assert set(summary.served) == {name for name, _ in DEMO_FLEET}
    assert summary.failovers >= summary.retried > 0
    breaker = [(t.endpoint, t.from_state, t.to_state) for t in summary.transitions if t.kind == "breaker"]
    assert ("primary", "closed", "open") in breaker and breaker[-1] == ("primary", "half_open", "closed")
    assert summary.breaker_transitions == len(breaker)
    assert any(t.to_state == "throttled" and t.endpoint == "backup" for t in summary.transitions)
    assert summary.p50_ms is not None and summary.p99_ms is not None
    assert summary.p99_ms >= 300.0 > summary.p50_ms  # the slow endpoint shows in the tail only
    spans = [json.loads(line) for line in trace.getvalue().splitlines()]
    assert {"breaker open", "breaker closed", "endpoint throttled"} <= {s["name"] for s in spans}
    assert "result: zero caller-visible failures in 200 requests" in out.getvalue()


def test_demo_command_plain_output_when_not_a_terminal(
    span_exporter: InMemorySpanExporter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a terminal: plain lines of at most 80 columns (events, progress, summary), trace file, exit 0."""
    trace = tmp_path / "spans.jsonl"
    code, out, err = run(capsys, "demo", "--virtual-clock", "--duration", "8", "--rate", "5", "--trace", str(trace))
    assert (code, err) == (0, "")
    assert "\x1b[" not in out
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert any("fault: primary refuses connections" in line for line in lines)
    assert any("primary: breaker closed -> open" in line for line in lines)
    assert sum(1 for line in lines if re.match(r" *\d+\.\ds  \d+/\d+ ok  \d+ in flight  \d+ failed  ", line)) >= 10  # progress
    assert lines[-1] == "result: zero caller-visible failures in 40 requests"
    names = {json.loads(line)["name"] for line in trace.read_text().splitlines()}
    assert "breaker open" in names and any(name.startswith("chat ") for name in names)


def test_demo_unwritable_trace_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--trace into a missing directory: exit 2 with one line, before anything starts."""
    code, out, err = run(capsys, "demo", "--trace", str(tmp_path / "no" / "such" / "dir.jsonl"))
    assert code == 2 and out == "" and "cannot write" in err


@pytest.mark.anyio
async def test_demo_live_view_in_a_terminal(span_exporter: InMemorySpanExporter) -> None:
    """A terminal gets the live view (redrawn with escape codes, no refresh thread) and the summary."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80, color_system="standard")
    summary = await run_demo(duration=4.0, rate=5.0, seed=1, console=console)
    text = out.getvalue()
    assert summary.ok
    assert "\x1b[" in text and "in-flight" in text and "faults now:" in text
    assert "result: zero caller-visible failures in 20 requests" in text


def test_live_view_fits_80_columns() -> None:
    """The live view, at its widest (long states, six events, active faults), fits 80 columns."""
    statuses = [
        EndpointStatus(name=name, provider=dialect, model="m", state="misconfigured", breaker="half_open",
                       in_flight=123, latency_ms=12345.6)
        for name, dialect in DEMO_FLEET
    ]
    tally = _Tally(sent=99999, succeeded=99990, failed=9, failovers=12345, retried=1234, latencies=[0.5, 1.5])
    console = Console(width=80, record=True, file=io.StringIO(), force_terminal=True)
    events = [f"{i:5.1f}s  primary: breaker half_open -> open (trial call failed)" for i in range(8)]
    console.print(render_view(statuses, tally, elapsed=12.3, duration=20.0,
                              active=[f.label for f in timeline(20.0)], events=events))
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert sum("(anthropic)" in line for line in lines) == 1 and "failed 9" in "\n".join(lines)
