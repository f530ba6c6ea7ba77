"""The command line and README tell the truth: errors in our words, labelled mock replies,
ignored variables said once, one JSON error shape, quiet broken pipes, the server's fault flags.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import closed_port

from runtime import Runtime
from runtime.cli import EXIT_CODES, main
from runtime.config import endpoints_from_env
from runtime.errors import ConfigError, ContextWindowExceeded
from runtime.testing import FaultyEndpoint
from runtime.testing.server import Faults, _parser, apply_faults

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No config from the developer's shell or working directory leaks into a test."""
    for var in ("LLM_RUNTIME_CONFIG", "LLM_BACKEND", "OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "ANTHROPIC_API_KEY",
                "DEEPSEEK_API_KEY", "OLLAMA_BASE_URL", "OLLAMA_HOST", "OLLAMA_MODEL", "CUSTOM_LLM_URL", "CUSTOM_LLM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def test_unreachable_endpoint_error_names_its_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A refused port: the one stderr line says "could not connect to endpoint 'x' (URL)", exit 1."""
    url = f"http://127.0.0.1:{closed_port()}/v1"
    path = tmp_path / "c.toml"
    path.write_text(f'[retry]\nmax_attempts = 2\nbackoff_base = 0.01\n[[endpoints]]\nname = "x"\n'
                    f'provider = "openai-compatible"\nmodel = "m"\nbase_url = "{url}"\n')
    code = main(["chat", "hi", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"llm-runtime: AllEndpointsFailed: no endpoint answered: could not connect to endpoint 'x' ({url})")
    assert "[ConnectionFailed x2]" in err


def test_mock_reply_from_the_shipped_example_is_labelled(capsys: pytest.CaptureFixture[str]) -> None:
    """`chat --config examples/runtime.toml hi` with no keys: the mock's answer comes with a note on stderr."""
    code = main(["chat", "hi", "--config", str(ROOT / "examples" / "runtime.toml"), "--timeout", "5"])
    out, err = capsys.readouterr()
    assert code == 0 and out.strip()
    assert "note: the reply is from the mock endpoint 'mock', not a model" in err
    assert "OPENAI_API_KEY is not set" in err


def test_ignored_variables_are_said_once(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """./runtime.toml found while LLM_BACKEND is set: one line says the variable is ignored."""
    (tmp_path / "runtime.toml").write_text('[[endpoints]]\nname = "m"\nprovider = "mock"\n')
    monkeypatch.setenv("LLM_BACKEND", "ollama")
    code = main(["chat", "hi"])
    err = capsys.readouterr().err
    assert code == 0
    assert err.count("ignoring LLM_BACKEND from the environment") == 1 and "runtime.toml" in err
    main(["chat", "hi", "--config", str(tmp_path / "runtime.toml")])  # named explicitly: nothing to say
    assert "ignoring" not in capsys.readouterr().err


def test_every_error_has_one_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Usage, configuration and request errors under --json: {"error": {type, message, explanation, exit_code}}."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[[endpoints]]\nname = "a"\nprovider = "ollama"\nmodel = "m"\nprority = 1\n')
    down = tmp_path / "down.toml"
    down.write_text(f'[retry]\nmax_attempts = 1\n[[endpoints]]\nname = "d"\nprovider = "ollama"\nmodel = "m"\n'
                    f'base_url = "http://127.0.0.1:{closed_port()}"\n')
    cases = [
        (["chat", "--json"], 2, "UsageError"),                             # the prompt is missing
        (["status", "--json", "--interval", "0"], 2, "UsageError"),        # not a positive number
        (["config", "check", str(bad), "--json"], 2, "ConfigError"),
        (["chat", "hi", "--json", "--config", str(down)], 1, "AllEndpointsFailed"),
        (["--json", "chat", "hi", "--temperature", "5", "--config", str(down)], 1, "InvalidRequest"),
    ]
    for argv, exit_code, kind in cases:
        code = main(argv)
        out, err = capsys.readouterr()
        error = json.loads(out)["error"]
        assert code == exit_code and error["exit_code"] == exit_code, argv
        assert error["type"] == kind and error["message"] and error["explanation"], argv
        assert err.startswith(f"llm-runtime: {kind}: ") and "Traceback" not in err, argv
    assert set(EXIT_CODES) == {0, 1, 2, 3, 130, 141}


def test_config_check_json(capsys: pytest.CaptureFixture[str]) -> None:
    """`config check --json`: the resolved configuration as JSON, with each endpoint's key status."""
    code = main(["config", "check", str(ROOT / "examples" / "runtime.toml"), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["valid"] is True and doc["config"]["retry"]["max_attempts"] >= 1
    openai = next(ep for ep in doc["config"]["endpoints"] if ep["name"] == "openai")
    assert openai["key"] == "no API key: environment variable OPENAI_API_KEY is not set"


@pytest.mark.parametrize(
    "command",
    [["config", "check", str(ROOT / "examples" / "runtime.toml")], ["demo", "--duration", "1", "--rate", "5"]],
    ids=["config check", "demo"],
)
def test_a_command_into_a_closed_pipe_exits_quietly(command: list[str]) -> None:
    """`llm-runtime COMMAND | head -1`: the reader is gone; no BrokenPipe traceback, exit 141
    (the demo's live view prints through rich, whose own answer was exit 1)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has already left: the first write fails
    try:
        done = subprocess.run(
            [sys.executable, "-m", "runtime", *command],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


@pytest.mark.parametrize("stderr_too", [False, True])
def test_bench_run_into_a_closed_pipe_exits_quietly(tmp_path: Path, stderr_too: bool) -> None:
    """`bench run S | head` (and `2>&1 | head`): the reader is gone; no traceback (the
    progress lines are written from the run's event loop), exit 141 as every command."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    command = [sys.executable, "-m", "runtime", "bench", "run", "500-once", "--no-control", "--no-plots",
               "--out", str(tmp_path)]
    try:
        done = subprocess.run(command, stdout=write_end, stderr=write_end if stderr_too else subprocess.PIPE,
                              text=True, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert "Traceback" not in (done.stderr or "")


def test_blocking_without_with_says_how() -> None:
    """`rt.blocking().chat(...)` raises an error that shows the `with` form."""
    rt = Runtime([FaultyEndpoint("openai").endpoint()])
    with pytest.raises(AttributeError, match=r"with rt\.blocking\(\) as brt: brt\.chat\(\.\.\.\)"):
        rt.blocking().chat("hi")


def test_prompt_too_long_for_every_window_is_context_window_exceeded() -> None:
    """What the README states: a prompt over every configured context_window raises ContextWindowExceeded, unsent."""

    async def attempt() -> None:
        async with FaultyEndpoint("openai") as local:
            async with Runtime([local.endpoint(context_window=50)]) as rt:
                with pytest.raises(ContextWindowExceeded, match="context window") as caught:
                    await rt.chat("word " * 200)
                assert caught.value.code == "context_length_exceeded" and not caught.value.retryable
            assert local.stats.requests == 0

    import anyio

    anyio.run(attempt)


def test_custom_url_without_model_names_the_variable() -> None:
    """CUSTOM_LLM_URL without CUSTOM_LLM_MODEL: a ConfigError naming CUSTOM_LLM_MODEL."""
    with pytest.raises(ConfigError, match="CUSTOM_LLM_MODEL") as info:
        endpoints_from_env({"CUSTOM_LLM_URL": "http://127.0.0.1:9/v1"})
    assert info.value.key == "CUSTOM_LLM_MODEL"


def test_server_fault_flags_set_the_faults() -> None:
    """The standalone server's fault flags land on its Faults."""
    args = _parser().parse_args(
        ["--error-rate", "0.25", "--error-status", "429", "--retry-after", "30", "--hang", "--cut-after", "3",
         "--reset", "--malformed", "--latency", "0.5", "--seed", "7"]
    )
    faults = Faults()
    apply_faults(faults, args)
    assert (faults.error_rate, faults.error_status, faults.retry_after) == (0.25, 429, 30.0)
    assert faults.hang and faults.reset and faults.malformed and faults.cut_after == 3 and faults.latency == 0.5
    with pytest.raises(SystemExit):
        _parser().parse_args(["--error-rate", "2"])


def test_server_command_refuses_and_rate_limits() -> None:
    """`python -m runtime.testing.server --error-rate 1 --error-status 429 --retry-after 30`: a 429 with
    Retry-After 30; `--refuse`: the printed port refuses connections."""
    import urllib.error
    import urllib.request

    def serve(*flags: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime.testing.server", "--port", "0", *flags],
            stdout=subprocess.PIPE, text=True,
        )
        return proc

    limited = serve("--error-rate", "1", "--error-status", "429", "--retry-after", "30")
    refusing = serve("--refuse")
    try:
        assert limited.stdout is not None and refusing.stdout is not None
        url = limited.stdout.readline().strip()
        request = urllib.request.Request(
            f"{url}/chat/completions", data=json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 429 and info.value.headers["Retry-After"] == "30"
        info.value.close()
        refused_url = refusing.stdout.readline().strip()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"{refused_url}/models", timeout=10)
    finally:
        for proc in (limited, refusing):
            proc.terminate()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


def test_parser_shape_takes_common_flags_before_or_after_the_command() -> None:
    """-v, --trace and --json work before the command and after it."""
    from runtime.cli import _parser as cli_parser

    parser = cli_parser()
    before = parser.parse_args(["-vv", "--json", "status"])
    after = parser.parse_args(["status", "-v", "--trace", "console"])
    assert (before.verbose, before.json, before.trace) == (2, True, None)
    assert (after.verbose, after.json, after.trace) == (1, False, "console")
    assert isinstance(before, argparse.Namespace) and callable(before.handler)


@pytest.mark.anyio
async def test_prompt_every_endpoint_calls_too_long_is_context_window_exceeded() -> None:
    """What the README states: when endpoints answer that the prompt is too long, the next one is tried,
    and ContextWindowExceeded itself (not AllEndpointsFailed) is raised when none is left."""

    too_long = "This model's maximum context length is 8192 tokens."
    async with FaultyEndpoint("openai", name="a") as a, FaultyEndpoint("ollama", name="b") as b:
        a.faults.fail_next(1, 400, message=too_long, code="context_length_exceeded")
        b.faults.fail_next(1, 400, message="input length exceeds the context length")
        async with Runtime([a.endpoint(priority=1), b.endpoint(priority=2)]) as rt:
            with pytest.raises(ContextWindowExceeded) as info:
                await rt.chat("a long prompt")
        assert (a.stats.requests, b.stats.requests) == (1, 1)
    assert info.value.endpoint == "b"


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every leaf command of ``parser`` by its full name (``config check``, ``bench run``)."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                out.update(_commands(sub, full + " ") or {full: sub})
    return out


def test_readme_cli_table_lists_every_flag() -> None:
    """Each command's row in the README's command table names every flag the command takes
    (the common -v/--trace/--json are described above the table)."""
    import re

    from runtime.cli import _parser as cli_parser

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Command line"):]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    common = {"-h", "--help", "-v", "--verbose", "--trace", "--json"}
    missing: dict[str, list[str]] = {}
    commands = _commands(cli_parser())
    assert {"demo", "chat", "status", "config check"} <= commands.keys()
    for name, sub in commands.items():
        row = next((r for r in rows if re.search(rf"`{re.escape(name)}[ `]", re.split(r"(?<!\\)\|", r)[1] + " ")), None)
        assert row is not None, f"no README row for {name!r}"
        flags = {
            flag
            for action in sub._actions
            if action.help != argparse.SUPPRESS
            for flag in action.option_strings
            if flag.startswith("--") and flag not in common
        }
        absent = sorted(f for f in flags if f"`{f}" not in row)
        if absent:
            missing[name] = absent
    assert missing == {}
