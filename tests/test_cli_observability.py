"""What a user sees of the runtime at work: log lines, spans on the console, OTLP export.

The log tests run a real Runtime against fault-injecting endpoints on the virtual clock
and read the records with caplog; the OTLP tests run the command in a fresh interpreter
(the global tracer provider can be set once per process) against a local receiver.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from test_cli import closed_port

from runtime import BreakerPolicy, HealthPolicy, Runtime
from runtime import _logging as runtime_logging
from runtime.cli import main
from runtime.testing import FaultyEndpoint

SECRET = "sk-log-test-4e1d-never-print-me"
PROMPT = "the secret plan is to paint the fence"
NO_PROBES = HealthPolicy(enabled=False)


def assert_clean(records: list[logging.LogRecord]) -> None:
    """No record carries the key or the prompt, in its message or its arguments."""
    for record in records:
        text = record.getMessage() + repr(record.args)
        assert SECRET not in text and "paint the fence" not in text, text


@pytest.mark.anyio
async def test_failover_logs_one_info_line_and_a_debug_line_per_attempt(caplog: pytest.LogCaptureFixture) -> None:
    """A refused primary: DEBUG per attempt (endpoint, outcome, elapsed), INFO for the failover; no key, no prompt."""
    caplog.set_level(logging.DEBUG, logger="runtime")
    async with FaultyEndpoint("openai", name="primary") as a, FaultyEndpoint("anthropic", name="backup") as b:
        a.faults.refuse()
        endpoints = [a.endpoint(priority=1, api_key=SECRET, health=NO_PROBES), b.endpoint(priority=2, health=NO_PROBES)]
        async with Runtime(endpoints) as rt:
            reply = await rt.chat(PROMPT)
    assert reply.endpoint == "backup"
    runtime_records = [r for r in caplog.records if r.name.startswith("runtime")]
    attempts = [r.getMessage() for r in runtime_records if r.levelno == logging.DEBUG and "attempt" in r.getMessage()]
    # The preferred tier gets one more try after its backoff before the backup tier.
    assert attempts[0].startswith("attempt 1 on primary: ConnectionFailed in ")
    assert attempts[1].startswith("attempt 2 on primary: ConnectionFailed in ")
    assert attempts[2].startswith("attempt 3 on backup: ok in ") and attempts[2].endswith(" ms")
    failovers = [r.getMessage() for r in runtime_records if r.levelno == logging.INFO and "failover" in r.getMessage()]
    assert failovers == ["failover: answered by backup after primary (ConnectionFailed), primary (ConnectionFailed)"]
    assert_clean(runtime_records)


@pytest.mark.anyio
async def test_breaker_trip_logs_the_transition_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """Two 500s open a threshold-2 breaker: an INFO line "breaker primary: closed -> open (...)" with its figures."""
    caplog.set_level(logging.INFO, logger="runtime")
    async with FaultyEndpoint("openai", name="primary") as a, FaultyEndpoint("ollama", name="backup") as b:
        a.faults.error_rate = 1.0
        breaker = BreakerPolicy(failure_threshold=2)
        endpoints = [
            a.endpoint(priority=1, api_key=SECRET, breaker=breaker, health=NO_PROBES),
            b.endpoint(priority=2, health=NO_PROBES),
        ]
        async with Runtime(endpoints) as rt:
            for _ in range(3):
                await rt.chat(PROMPT)
    lines = [r.getMessage() for r in caplog.records if r.name == "runtime" and r.levelno == logging.INFO]
    trips = [line for line in lines if line.startswith("breaker primary: closed -> open")]
    assert len(trips) == 1 and "failure_count=2" in trips[0]
    assert any(line.startswith("endpoint primary: ") and "-> unhealthy" in line for line in lines)
    assert all(r.levelno >= logging.INFO for r in caplog.records if r.name == "runtime")  # no DEBUG asked for
    assert_clean(caplog.records)


def test_log_level_from_the_environment() -> None:
    """LLM_RUNTIME_LOG=debug|info|warning names a level; anything else is ignored."""
    assert runtime_logging.level_from_env({"LLM_RUNTIME_LOG": "DEBUG"}) == logging.DEBUG
    assert runtime_logging.level_from_env({"LLM_RUNTIME_LOG": "info"}) == logging.INFO
    assert runtime_logging.level_from_env({"LLM_RUNTIME_LOG": "loud"}) is None
    assert runtime_logging.level_from_env({}) is None


def test_llm_runtime_log_turns_logging_on_at_import(tmp_path: Path) -> None:
    """LLM_RUNTIME_LOG=info in a fresh interpreter: runtime's INFO lines reach stderr without code."""
    script = (
        "import logging, runtime\n"
        "logging.getLogger('runtime').info('hello from the runtime logger')\n"
        "logging.getLogger('runtime').debug('not at info')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "LLM_RUNTIME_LOG": "info"}, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "INFO    runtime: hello from the runtime logger" in done.stderr and "not at info" not in done.stderr


def test_configure_replaces_its_own_handler() -> None:
    """configure() twice leaves one handler of its own: lines are never doubled."""
    first, second = io.StringIO(), io.StringIO()
    logger = logging.getLogger("runtime")
    before = logger.level
    with runtime_logging.logging_to_stderr(logging.WARNING):
        runtime_logging.configure(logging.INFO, first)
        runtime_logging.configure(logging.INFO, second)
        logger.info("once")
    assert logger.level == before
    assert first.getvalue() == "" and second.getvalue().count("once") == 1


# --- the command line --------------------------------------------------------------------------------


@pytest.fixture
def down_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config with one endpoint on a closed port, one attempt, no probes."""
    monkeypatch.chdir(tmp_path)
    port = closed_port()
    path = tmp_path / "down.toml"
    path.write_text(
        "[retry]\nmax_attempts = 1\n[[endpoints]]\nname = \"down\"\nprovider = \"openai-compatible\"\n"
        f"model = \"m\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\napi_key = \"{SECRET}\"\n"
        "[endpoints.health]\nenabled = false\n"
    )
    return path


def test_cli_vv_logs_every_attempt_to_stderr(down_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`chat -vv`: the attempt's DEBUG line and the endpoint's INFO transition on stderr, never the key or prompt."""
    handlers = list(logging.getLogger("runtime").handlers)
    code = main(["chat", PROMPT, "-vv", "--config", str(down_config)])
    assert logging.getLogger("runtime").handlers == handlers  # the command's handler is gone again
    out, err = capsys.readouterr()
    assert code == 1
    assert "DEBUG   runtime: attempt 1 on down: ConnectionFailed in" in err
    assert "INFO    runtime: endpoint down: healthy -> degraded" in err
    assert SECRET not in out + err and "paint the fence" not in out + err


def test_cli_trace_console_prints_each_span(down_config: Path, capsys: pytest.CaptureFixture[str], span_exporter: object) -> None:
    """`--trace console`: one readable line per span on stderr (the request's span, its attempt, transitions)."""
    code = main(["--trace", "console", "chat", "hi", "--config", str(down_config)])
    _, err = capsys.readouterr()
    spans = [line for line in err.splitlines() if line.startswith("span ")]
    assert code == 1
    assert any(line.startswith("span 'attempt down'") and "outcome=ConnectionFailed" in line for line in spans)
    assert any(line.startswith("span 'endpoint degraded'") and "from_state=healthy" in line for line in spans)
    assert SECRET not in err


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector stand-in: records each POST's path and answers 200."""

    paths: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def collector() -> Iterator[str]:
    """A local OTLP/HTTP receiver on 127.0.0.1; yields its base URL."""
    _Receiver.paths = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _run_cli(*argv: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *argv], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **env}, cwd=cwd,
    )


def test_otel_variables_export_spans_and_metrics_over_otlp(collector: str, down_config: Path) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT set: the command's spans and metrics reach the collector (flushed at exit)."""
    done = _run_cli("chat", "hi", "--config", str(down_config), env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector},
                    cwd=down_config.parent)
    assert done.returncode == 1, done.stderr
    assert "/v1/traces" in _Receiver.paths and "/v1/metrics" in _Receiver.paths


def test_a_down_exporter_is_one_warning(down_config: Path) -> None:
    """The collector's port is closed: one WARNING line on the runtime logger, not a traceback."""
    port = closed_port()
    done = _run_cli(
        "chat", "hi", "--config", str(down_config),
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"},
        cwd=down_config.parent,
    )
    assert done.returncode == 1
    warnings = [line for line in done.stderr.splitlines() if "runtime: OTLP exporter is down" in line]
    assert len(warnings) == 1, done.stderr
    assert "Traceback" not in done.stderr
