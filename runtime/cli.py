"""The ``llm-runtime`` command (also ``python -m runtime``).

::

    llm-runtime demo [--duration S] [--rate N] [--seed N] [--trace FILE]
    llm-runtime chat PROMPT [--model M] [--system S] [--stream] [--max-tokens N] [--json]
    llm-runtime status
    llm-runtime config check [FILE]

Every command but ``demo`` finds its configuration the same way: ``--config FILE``,
else the file named by ``LLM_RUNTIME_CONFIG``, else ``./runtime.toml``, else the
environment (``LLM_BACKEND``, ``OPENAI_API_KEY``, … as :meth:`Runtime.from_env` reads it).

Exit codes: 0 success; 1 the request or check failed (an :class:`LLMError`, no healthy
endpoint, a demo request that failed); 2 bad usage or configuration (argparse errors,
:class:`ConfigError`); 130 interrupted. Errors are one line on stderr, never a
traceback, and no key is ever printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import anyio
import msgspec

from ._runtime import Runtime
from .config import RuntimeConfig, load_config
from .endpoint.actor import EndpointStatus
from .errors import AllEndpointsFailed, ConfigError, LLMError
from .providers import adapter_for
from .types import Attempt, ChatResponse

__all__ = ["CONFIG_ENV", "find_config", "load_runtime", "main"]

PROG = "llm-runtime"
#: The variable naming a config file when ``--config`` is not given.
CONFIG_ENV = "LLM_RUNTIME_CONFIG"
#: The file looked for in the working directory when neither is given.
DEFAULT_CONFIG = "runtime.toml"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# --- configuration discovery ---------------------------------------------------------------


def find_config(
    explicit: str | None, environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Path | None:
    """The config file to use: ``explicit``, else ``$LLM_RUNTIME_CONFIG``, else ``./runtime.toml``.

    None means: build the runtime from the environment. A file named explicitly or by
    the variable must exist (loading it says so if not); ``./runtime.toml`` is used only
    when it exists.
    """
    if explicit:
        return Path(explicit)
    env = os.environ if environ is None else environ
    named = env.get(CONFIG_ENV)
    if named:
        return Path(named)
    local = (cwd or Path.cwd()) / DEFAULT_CONFIG
    return local if local.is_file() else None


def load_runtime(explicit: str | None, **overrides: Any) -> Runtime:
    """A runtime from the discovered config file, or from the environment when there is none."""
    path = find_config(explicit)
    if path is not None:
        return Runtime.from_config(path, **overrides)
    return Runtime.from_env(**overrides)


# --- arguments ----------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config",
        metavar="FILE",
        help=f"config file (default: ${CONFIG_ENV}, then ./{DEFAULT_CONFIG}, then the environment)",
    )

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A resilience runtime for LLM endpoints: failover, breakers, retries, health probes.",
        epilog="Start with `llm-runtime demo`: no network and no API key needed.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo",
        help="watch failover live: three local endpoints, scripted faults, zero failed requests",
        description=(
            "Start three local endpoints (OpenAI, Anthropic and Ollama dialects), send a steady "
            "stream of requests through a Runtime while the primary goes down, the backup is "
            "rate-limited and the local one slows, and show that every request is answered."
        ),
    )
    demo.add_argument("--duration", type=_positive_float, default=20.0, metavar="S", help="seconds to run (default: 20)")
    demo.add_argument("--rate", type=_positive_float, default=20.0, metavar="N", help="requests per second (default: 20)")
    demo.add_argument("--seed", type=int, default=0, metavar="N", help="seed for jitter and choices (default: 0)")
    demo.add_argument("--trace", metavar="FILE", help="write every OpenTelemetry span to FILE as one JSON line")
    # Runs the timeline on the fast-forwarding test loop (latencies are then virtual):
    # how the tests drive the command; not advertised.
    demo.add_argument("--virtual-clock", action="store_true", help=argparse.SUPPRESS)

    chat = commands.add_parser(
        "chat", parents=[config], help="send one prompt and print the reply",
        description="Send one prompt through the configured endpoints and print the reply.",
    )
    chat.add_argument("prompt", metavar="PROMPT", help="the prompt; '-' reads it from stdin")
    chat.add_argument("--model", help="route by model or group name")
    chat.add_argument("--endpoint", help="send to this endpoint only")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--max-tokens", type=_positive_int, metavar="N", help="cap the reply's length in tokens")
    chat.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (0-2)")
    chat.add_argument("--timeout", type=_positive_float, metavar="S", help="deadline of the whole request in seconds")
    chat.add_argument("--stream", action="store_true", help="print the reply as it arrives")
    chat.add_argument("--json", action="store_true", help="print the whole reply (or the error) as JSON")

    commands.add_parser(
        "status", parents=[config], help="probe every endpoint once and print their states",
        description="Probe every configured endpoint once; exit 1 when none is healthy.",
    )

    config_cmd = commands.add_parser("config", help="configuration tools", description="Configuration tools.")
    config_sub = config_cmd.add_subparsers(dest="config_command", metavar="ACTION")
    config_sub.required = True
    check = config_sub.add_parser(
        "check", parents=[config], help="validate a config file and print it resolved, keys masked",
        description=(
            "Validate a config file and print the resolved configuration (every default filled "
            "in, keys masked) as TOML, with whether each endpoint's key variable is set."
        ),
    )
    check.add_argument("file", nargs="?", metavar="FILE", help="the file (default: discovered like the other commands)")
    return parser


# --- main -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        match args.command:
            case "demo":
                return _demo(args)
            case "chat":
                return _chat(args)
            case "status":
                return _status(args)
            case _:
                return _config_check(args)
    except ConfigError as exc:
        _error(exc)
        return EXIT_USAGE
    except LLMError as exc:
        _error(exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _error(exc: BaseException, note: str = "") -> None:
    """One line on stderr: the error's class and message (messages never carry keys)."""
    message = " ".join(str(exc).split())
    if note:
        message += f" ({note})"
    print(f"{PROG}: {type(exc).__name__}: {message}", file=sys.stderr)


# --- demo -------------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .demo import run_demo

    trace: TextIO | None = None
    if args.trace:
        try:
            trace = open(args.trace, "w", encoding="utf-8")
        except OSError as exc:
            print(f"{PROG}: cannot write {args.trace}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    options: dict[str, Any] = {}
    if args.virtual_clock:
        from .testing import VirtualClockLoop

        options["loop_factory"] = VirtualClockLoop
    try:
        summary = anyio.run(
            run_demo, args.duration, args.rate, args.seed, trace, Console(), backend="asyncio", backend_options=options
        )
    finally:
        if trace is not None:
            trace.close()
    return EXIT_OK if summary.ok else EXIT_FAILED


# --- chat ---------------------------------------------------------------------------------------------


def _chat(args: argparse.Namespace) -> int:
    prompt: str = args.prompt
    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        print(f"{PROG}: the prompt is empty", file=sys.stderr)
        return EXIT_USAGE
    rt = load_runtime(args.config)
    try:
        reply = anyio.run(_chat_async, rt, prompt, args)
    except LLMError as exc:
        if args.json:
            sys.stdout.write(_encode_json({"error": _error_json(exc)}) + "\n")
        # A missing key is the likeliest cause of "nothing could take it": say which.
        problems = [f"{ep.name}: {problem}" for ep in rt.endpoints if (problem := ep.key_problem())]
        _error(exc, note="; ".join(problems))
        return EXIT_FAILED
    if args.json:
        sys.stdout.write(_encode_json(_reply_json(reply)) + "\n")
    elif not args.stream:
        sys.stdout.write(reply.text + ("\n" if not reply.text.endswith("\n") else ""))
    return EXIT_OK


async def _chat_async(rt: Runtime, prompt: str, args: argparse.Namespace) -> ChatResponse:
    options: dict[str, Any] = {
        "system": args.system,
        "model": args.model,
        "endpoint": args.endpoint,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "timeout": args.timeout,
    }
    async with rt:
        if not args.stream:
            return await rt.chat(prompt, **options)
        printing = not args.json
        printed = False
        try:
            async with rt.stream(prompt, **options) as stream:
                async for chunk in stream:
                    if printing and chunk.text:
                        sys.stdout.write(chunk.text)
                        sys.stdout.flush()
                        printed = True
        finally:
            # End the line of text either way: an error line must not trail the partial text.
            if printing and printed:
                sys.stdout.write("\n")
        if printing and not printed:
            sys.stdout.write("\n")
        return stream.response


def _attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "endpoint": attempt.endpoint,
        "error": None if attempt.error is None else _exception_json(attempt.error),
        "elapsed": round(attempt.elapsed, 6),
        "hedge": attempt.hedge,
        "cancelled": attempt.cancelled,
    }


def _exception_json(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc)}


def _error_json(exc: LLMError) -> dict[str, Any]:
    data = _exception_json(exc)
    if isinstance(exc, AllEndpointsFailed):
        data["attempts"] = [_attempt_json(a) for a in exc.attempts]
    return data


def _reply_json(reply: ChatResponse) -> dict[str, Any]:
    # Every top-level field, defaults included, so scripts can rely on the keys.
    data: dict[str, Any] = {name: getattr(reply, name) for name in reply.__struct_fields__}
    data["attempts"] = [_attempt_json(a) for a in reply.attempts]
    return data


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, BaseException):
        return _exception_json(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _encode_json(data: Any) -> str:
    return msgspec.json.encode(data, enc_hook=_enc_hook).decode()


# --- status -------------------------------------------------------------------------------------------


class _Probe(msgspec.Struct, frozen=True):
    """One endpoint's probe: whether it answered and how long it took (None: not probed)."""

    ok: bool
    latency: float | None
    error: str | None = None


def _status(args: argparse.Namespace) -> int:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    rt = load_runtime(args.config)
    rows: list[tuple[EndpointStatus, _Probe]] = anyio.run(_probe_all, rt)
    console = Console()
    table = Table(box=box.SIMPLE_HEAD if console.is_terminal else None, pad_edge=False)
    table.add_column("endpoint", no_wrap=True)
    table.add_column("provider", no_wrap=True)
    table.add_column("model", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("latency", justify="right", no_wrap=True)
    table.add_column("last error", overflow="fold")
    healthy = 0
    details: list[str] = []
    for status, probe in rows:
        good = probe.ok and status.state in ("healthy", "degraded")
        healthy += good
        error = "" if good else (probe.error or status.last_error or "")
        if error:
            details.append(f"{status.name}: {error}")
        table.add_row(
            status.name,
            status.provider,
            status.model or "-",
            Text(status.state, style="green" if good else "red"),
            "-" if probe.latency is None or not probe.ok else f"{probe.latency * 1000:.0f} ms",
            _short_error(error),
        )
    console.print(table)
    # The whole errors below the table: a column wide enough for them would crush the rest.
    for line in details:
        console.print(line, markup=False, highlight=False)
    console.print(f"{healthy} of {len(rows)} endpoints healthy", markup=False, highlight=False)
    return EXIT_OK if healthy else EXIT_FAILED


def _short_error(error: str) -> str:
    """The gist of a status error: its class (``ConnectionFailed``) or its first words."""
    return error.removeprefix("probe: ").split(":", 1)[0]


async def _probe_all(rt: Runtime) -> list[tuple[EndpointStatus, _Probe]]:
    probes: dict[str, _Probe] = {}

    async def probe(name: str) -> None:
        actor = rt.actor(name)
        problem = actor.endpoint.key_problem()
        if problem is not None:
            # Without a key the answer is known: a 401 would only add a request.
            probes[name] = _Probe(ok=False, latency=None, error=problem)
            return
        started = anyio.current_time()
        ok = await actor.probe()
        probes[name] = _Probe(ok=ok, latency=anyio.current_time() - started)

    async with rt:
        async with anyio.create_task_group() as tg:
            for endpoint in rt.endpoints:
                tg.start_soon(probe, endpoint.name)
        statuses = rt.status()
    return [(s, probes[s.name]) for s in statuses]


# --- config check -----------------------------------------------------------------------------------


def _config_check(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else find_config(args.config)
    if path is not None:
        config = load_config(path)
        source = str(path)
    else:
        from .config import endpoints_from_env

        config = RuntimeConfig(endpoints=endpoints_from_env())
        source = "the environment"
    # The Runtime checks what a single struct cannot (duplicate endpoint names), and the
    # adapters what only a provider knows (an openai-compatible endpoint needs base_url).
    Runtime(**config.runtime_kwargs())
    for endpoint in config.endpoints:
        if endpoint.provider != "mock":
            adapter_for(endpoint)
    missing = [ep for ep in config.endpoints if ep.key_problem() is not None]
    out = sys.stdout
    out.write(f"# {source}: valid, {len(config.endpoints)} endpoint(s); resolved, keys masked\n")
    out.write(_resolved_toml(config))
    if missing:
        names = ", ".join(repr(ep.name) for ep in missing)
        out.write(f"# warning: no API key for {names}: set the variable(s) named above\n")
    return EXIT_OK


def _resolved_toml(config: RuntimeConfig) -> str:
    """The configuration with every default filled in, as TOML; keys masked, key status as comments."""
    lines: list[str] = []
    data = msgspec.to_builtins(config)
    del data["endpoints"]  # written from Endpoint.masked() below
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    for key, value in data.items():
        if key not in tables and value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, table in tables.items():
        lines.append("")
        lines.append(f"[{key}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
    for endpoint in config.endpoints:
        masked = endpoint.masked()
        lines.append("")
        lines.append("[[endpoints]]")
        lines.append(f"# key: {_key_status(endpoint.api_key, endpoint.key_env, endpoint.key_problem())}")
        subtables = {k: v for k, v in masked.items() if isinstance(v, dict) and k != "headers"}
        for key, value in masked.items():
            if key in subtables or value is None:
                continue
            lines.append(f"{key} = {_toml_value(value)}")
        for key, table in subtables.items():
            lines.append(f"[endpoints.{key}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
    return "\n".join(lines) + "\n"


def _key_status(api_key: str | None, key_env: str | None, problem: str | None) -> str:
    if api_key:
        return "given in the file (masked)"
    if problem is not None:
        return problem
    if key_env and os.environ.get(key_env):
        return f"from {key_env} (set)"
    return "none needed"


def _toml_value(value: Any) -> str:
    match value:
        case bool():
            return "true" if value else "false"
        case int() | float():
            return repr(value)
        case str():
            return json.dumps(value, ensure_ascii=False)
        case list():
            return "[" + ", ".join(_toml_value(v) for v in value) + "]"
        case dict():
            inner = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items() if v is not None)
            return "{" + (f" {inner} " if inner else "") + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
