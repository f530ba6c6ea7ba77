"""The ``llm-runtime`` command (also ``python -m runtime``).

::

    llm-runtime demo [--duration S] [--rate N] [--seed N]
    llm-runtime chat PROMPT [--config F] [--model M] [--endpoint NAME] [--system S] [--max-tokens N]
                            [--temperature T] [--timeout S] [--stream [--on-interrupt raise|restart|continue]]
    llm-runtime status [--config F] [--watch [--interval S] [--count N]]
    llm-runtime serve [--config F] [--host H] [--port N] [--workers N] [--loop auto|asyncio|uvloop]
    llm-runtime config check [FILE]
    llm-runtime bench list | run [NAME|FILE ...] [--system S] [--out DIR] | report DIR ...

Every command takes ``-v``/``-vv`` (INFO / DEBUG log lines on stderr), ``--trace
console|FILE`` (every span to stderr, or to FILE as JSON lines) and ``--json`` (the
result, or the error, as one JSON document on stdout). Every command but ``demo`` finds
its configuration the same way: ``--config FILE``, else the file named by
``LLM_RUNTIME_CONFIG``, else ``./runtime.toml``, else the environment (``LLM_BACKEND``,
``OPENAI_API_KEY``, … as :meth:`Runtime.from_env` reads it).

Exit codes (:data:`EXIT_CODES`): 0 success; 1 the request or check failed (an
:class:`LLMError`, no endpoint up, a demo request that failed); 2 bad usage or
configuration; 3 ``status``: some endpoints are down, at least one is up; 130
interrupted; 141 stdout was closed early (``| head``). Errors are one line on stderr,
never a traceback, and no key is ever printed; with ``--json`` the error is also
``{"error": {"type", "message", "exit_code", ...}}`` on stdout.

A new command is one :func:`_command` call naming its handler, a function from the
parsed arguments to an exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio
import msgspec

from . import _logging
from ._observability import telemetry_for_cli
from ._runtime import Runtime
from .config import RuntimeConfig, load_config
from .endpoint.actor import EndpointStatus
from .errors import AllEndpointsFailed, ConfigError, LLMError, ProviderError
from .gateway.config import GatewayConfig
from .policy import ON_INTERRUPT, Endpoint
from .providers import adapter_for
from .providers.registry import PROVIDERS
from .types import Attempt, ChatResponse

__all__ = ["CONFIG_ENV", "EXIT_CODES", "find_config", "load_runtime", "main"]

PROG = "llm-runtime"
#: The variable naming a config file when ``--config`` is not given.
CONFIG_ENV = "LLM_RUNTIME_CONFIG"
#: The file looked for in the working directory when neither is given.
DEFAULT_CONFIG = "runtime.toml"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141

#: Every exit status the command uses, and what it means.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success (status: every endpoint is up)",
    EXIT_FAILED: "the request or check failed (status: no endpoint is up)",
    EXIT_USAGE: "bad usage or configuration",
    EXIT_PARTIAL: "status: some endpoints are down, at least one is up",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_PIPE: "stdout was closed before the output ended (e.g. piped into head)",
}

#: Variables Runtime.from_env reads that a config file makes irrelevant (key
#: variables are not among them: a file names them with api_key_env).
_ENV_ONLY = (
    "LLM_BACKEND", "OPENAI_BASE_URL", "OPENAI_MODEL", "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT",
    "OPENAI_API_VERSION", "ANTHROPIC_MODEL", "DEEPSEEK_MODEL", "DEEPSEEK_BASE_URL", "OLLAMA_BASE_URL",
    "OLLAMA_HOST", "OLLAMA_MODEL", "CUSTOM_LLM_URL", "CUSTOM_LLM_MODEL", "CUSTOM_LLM_HEADERS",
)


class UsageError(Exception):
    """The command line itself is wrong (argparse's complaint, or an empty prompt)."""


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
    """A runtime from the discovered config file, or from the environment when there is none.

    A file found without ``--config`` while provider variables are set says once, on
    stderr, that those variables are ignored: otherwise a user who exported
    ``LLM_BACKEND`` would wonder why it has no effect.
    """
    path = find_config(explicit)
    if path is None:
        return Runtime.from_env(**overrides)
    if not explicit:
        ignored = [name for name in _ENV_ONLY if os.environ.get(name)]
        if ignored:
            how = f"${CONFIG_ENV}" if os.environ.get(CONFIG_ENV) else "found in the working directory"
            print(
                f"{PROG}: using {path} ({how}); ignoring {', '.join(ignored)} from the environment",
                file=sys.stderr,
            )
    return Runtime.from_config(path, **overrides)


# --- arguments ----------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _positive_int(text: str, least: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {text!r}")
    return value


def _count(text: str) -> int:
    return _positive_int(text, least=0)


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing and exiting, so ``--json`` can report it."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


Handler = Callable[[argparse.Namespace], int]


def _common(*, top: bool) -> argparse.ArgumentParser:
    # On the subcommands the defaults are suppressed, so `llm-runtime -v chat hi` keeps
    # the -v given before the command.
    default: Any = None if top else argparse.SUPPRESS
    common = _Parser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=0 if top else argparse.SUPPRESS,
        help="log state transitions and failovers to stderr; -vv also every attempt",
    )
    common.add_argument(
        "--trace", metavar="console|FILE", default=default,
        help="write every OpenTelemetry span to stderr (console) or to FILE as JSON lines",
    )
    common.add_argument(
        "--json", action="store_true", default=False if top else argparse.SUPPRESS,
        help="print the result, or the error, as JSON on stdout",
    )
    return common


def _parser() -> argparse.ArgumentParser:
    config = _Parser(add_help=False)
    config.add_argument(
        "--config",
        metavar="FILE",
        help=f"config file (default: ${CONFIG_ENV}, then ./{DEFAULT_CONFIG}, then the environment)",
    )
    codes = "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items())
    parser = _Parser(
        prog=PROG,
        parents=[_common(top=True)],
        description="A resilience runtime for LLM endpoints: failover, breakers, retries, health probes.",
        epilog=f"Start with `llm-runtime demo`: no network and no API key needed. Exit codes: {codes}.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    common = _common(top=False)

    def _command(
        subparsers: Any, name: str, handler: Handler, *, help: str, description: str, configured: bool = True
    ) -> argparse.ArgumentParser:
        parents = [common, config] if configured else [common]
        command: argparse.ArgumentParser = subparsers.add_parser(
            name, parents=parents, help=help, description=description
        )
        command.set_defaults(handler=handler)
        return command

    for add in (_add_demo, _add_chat, _add_status, _add_serve, _add_config):
        add(commands, _command)
    from .harness.command import add_bench

    add_bench(commands, _command, _Parser)
    return parser


def _add_demo(commands: Any, add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """``demo``: the failover demo against built-in local endpoints."""
    demo = add_command(
        commands, "demo", _demo, configured=False,
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
    # Runs the timeline on the fast-forwarding test loop (latencies are then virtual):
    # how the tests drive the command; not advertised.
    demo.add_argument("--virtual-clock", action="store_true", help=argparse.SUPPRESS)


def _add_chat(commands: Any, add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """``chat`` and ``complete``: one prompt through the configured endpoints."""
    chat = add_command(
        commands, "chat", _chat, help="send one prompt and print the reply",
        description="Send one prompt through the configured endpoints and print the reply.",
    )
    complete = add_command(
        commands, "complete", _chat, help="continue one prompt with a text-completion API",
        description=(
            "Continue a prompt with the text-completion API of the configured endpoints that have one "
            "(OpenAI-compatible /completions, Ollama /api/generate) and print the completion."
        ),
    )
    chat.set_defaults(kind="chat")
    complete.set_defaults(kind="completion")
    for command in (chat, complete):
        command.add_argument("prompt", metavar="PROMPT", help="the prompt; '-' reads it from stdin")
        command.add_argument("--model", help="route by model or group name")
        command.add_argument("--endpoint", metavar="NAME", help="send to this endpoint only")
        command.add_argument("--max-tokens", type=_positive_int, metavar="N", help="cap the reply's length in tokens")
        command.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (0-2)")
        command.add_argument("--timeout", type=_positive_float, metavar="S", help="deadline of the whole request in seconds")
        command.add_argument("--stream", action="store_true", help="print the reply as it arrives")
        command.add_argument(
            "--on-interrupt", choices=ON_INTERRUPT, metavar="POLICY",
            help="with --stream, when the answer fails mid-way: raise (default), restart it elsewhere, "
            "or continue it on an endpoint that can",
        )
    chat.add_argument("--system", help="system prompt")
    chat.add_argument(
        "--schema", type=_json_schema_file, metavar="FILE",
        help="a JSON-schema file the reply must match (it is checked; printed as the JSON it is)",
    )
    chat.add_argument("--repair", type=_count, default=0, metavar="N",
                      help="with --schema, send an invalid reply back to its endpoint up to N times (default: 0)")


def _add_status(commands: Any, add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """``status``: probe every endpoint, once or ``--watch``."""
    status = add_command(
        commands, "status", _status, help="probe every endpoint and print their states",
        description=(
            "Probe every configured endpoint; exit 0 when all are up, 3 when some are down, "
            "1 when none is up. --watch keeps probing and redraws the table."
        ),
    )
    status.add_argument("--watch", action="store_true", help="keep probing and redraw the table until Ctrl-C")
    status.add_argument("--interval", type=_positive_float, default=2.0, metavar="S",
                        help="seconds between probes with --watch (default: 2)")
    status.add_argument("--count", type=_positive_int, metavar="N", help="with --watch, stop after N refreshes")


def _add_serve(commands: Any, add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """``serve``: the OpenAI- and Anthropic-compatible gateway."""
    serve = add_command(
        commands, "serve", _serve, help="run the OpenAI- and Anthropic-compatible gateway",
        description=(
            "Serve /v1/chat/completions, /v1/messages, /v1/embeddings and /v1/models over the configured "
            "endpoints; print the base URL when ready; drain on SIGTERM. Settings: the [gateway] table."
        ),
    )
    serve.add_argument("--host", help="address to bind (default: [gateway] host, else 127.0.0.1)")
    serve.add_argument("--port", type=int, metavar="N", help="port to bind; 0 picks a free one (default: [gateway] port, else 4000)")
    serve.add_argument("--workers", type=_positive_int, default=1, metavar="N", help="processes sharing the port (default: 1)")
    serve.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                       help="event loop (default: auto, uvloop when installed)")
    # A worker started by --workers: binds with SO_REUSEPORT. Not advertised.
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def _add_config(commands: Any, add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """``config check``: validate a config file and print it resolved."""
    config_cmd = commands.add_parser("config", help="configuration tools", description="Configuration tools.")
    config_sub = config_cmd.add_subparsers(dest="config_command", metavar="ACTION", parser_class=_Parser)
    config_sub.required = True
    check = add_command(
        config_sub, "check", _config_check,
        help="validate a config file and print it resolved, keys masked",
        description=(
            "Validate a config file and print the resolved configuration (every default filled "
            "in, keys masked) as TOML, with whether each endpoint's key variable is set."
        ),
    )
    check.add_argument("file", nargs="?", metavar="FILE", help="the file (default: discovered like the other commands)")


# --- main -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help and --version (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except UsageError as exc:
        # --json is honoured even when the rest of the line could not be parsed.
        return _fail(exc, EXIT_USAGE, as_json="--json" in argv)
    verbose: int = args.verbose
    # Warnings (a budget nearly spent, an exporter down) always show; -v and
    # LLM_RUNTIME_LOG ask for more.
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else (_logging.level_from_env() or logging.WARNING)
    handler: Handler = args.handler
    try:
        with _logging.logging_to_stderr(level), telemetry_for_cli(args.trace, sys.stderr):
            return handler(args)
    except BrokenPipeError:
        return _pipe_gone()
    except BaseExceptionGroup as group:  # a write from a task of a command's event loop
        if group.split(BrokenPipeError)[1] is None:
            return _pipe_gone()
        raise
    except OSError as exc:  # the --trace file
        return _fail(ConfigError(f"cannot write {exc.filename}: {exc.strerror or exc}", key="trace"), EXIT_USAGE, args.json)
    except UsageError as exc:
        return _fail(exc, EXIT_USAGE, args.json)
    except ConfigError as exc:
        return _fail(exc, EXIT_USAGE, args.json)
    except LLMError as exc:
        return _fail(exc, EXIT_FAILED, args.json)
    except KeyboardInterrupt:
        return _fail(KeyboardInterrupt("interrupted"), EXIT_INTERRUPTED, args.json)


def _pipe_gone() -> int:
    """The reader went away (`| head`): say nothing, and keep Python from complaining again
    when it flushes stdout and stderr at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        os.dup2(devnull, stream.fileno())
    return EXIT_PIPE


def _fail(exc: BaseException, code: int, as_json: bool, endpoints: Sequence[Endpoint] = ()) -> int:
    """Report ``exc``: one line on stderr and, with ``--json``, the error document on stdout."""
    if as_json:
        sys.stdout.write(_encode_json({"error": _error_json(exc, code, endpoints)}) + "\n")
    print(f"{PROG}: {type(exc).__name__}: {explain(exc, endpoints)}", file=sys.stderr)
    return code


# --- errors in our words ------------------------------------------------------------------------

#: What each failure means, said plainly; "{where}" is the endpoint and its URL.
_WORDS: dict[str, str] = {
    "ConnectionFailed": "could not connect to {where}",
    "Timeout": "{where} did not answer in time",
    "RateLimited": "{where} is rate-limiting us (HTTP 429)",
    "Overloaded": "{where} is overloaded",
    "ServerError": "{where} failed with a server error",
    "AuthenticationFailed": "{where} refused the API key",
    "BadRequest": "{where} rejected the request as invalid",
    "NotFound": "{where} has no such model or path",
    "ContextWindowExceeded": "the prompt does not fit the context window of {where}",
    "ContentFiltered": "the safety filter of {where} refused it",
    "ProtocolError": "{where} sent a reply that is not what its provider's API sends",
}


def url_of(endpoint: Endpoint) -> str | None:
    """Where an endpoint's requests go: its ``base_url``, else its provider's default."""
    if endpoint.base_url:
        return endpoint.base_url
    return PROVIDERS[endpoint.provider].base_url


def _where(name: str | None, endpoints: Sequence[Endpoint]) -> str:
    for endpoint in endpoints:
        if endpoint.name == name:
            url = url_of(endpoint)
            return f"endpoint {name!r} ({url})" if url else f"endpoint {name!r}"
    return f"endpoint {name!r}" if name else "the endpoint"


def _provider_words(exc: BaseException, endpoints: Sequence[Endpoint]) -> str:
    kind = type(exc).__name__
    template = _WORDS.get(kind)
    where = _where(getattr(exc, "endpoint", None), endpoints)
    if template is None:
        return f"{where}: {exc}"
    said = template.format(where=where)
    status = getattr(exc, "status", None)
    if status is not None and "HTTP" not in said:
        said += f" (HTTP {status})"
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        said += f", retry after {retry_after:g}s"
    return said


def explain(exc: BaseException, endpoints: Sequence[Endpoint] = ()) -> str:
    """``exc`` in our words, on one line: which endpoint and URL failed, and how."""
    if isinstance(exc, AllEndpointsFailed):
        failures: dict[str, list[str]] = {}
        for attempt in exc.attempts:
            if attempt.error is not None and not attempt.cancelled:
                failures.setdefault(_provider_words(attempt.error, endpoints), []).append(type(attempt.error).__name__)
        said = "; ".join(
            f"{words} [{kinds[0]}{f' x{len(kinds)}' if len(kinds) > 1 else ''}]" for words, kinds in failures.items()
        )
        reason = exc.message.removeprefix("every attempt failed: ")
        return " ".join(f"no endpoint answered: {said} ({reason})".split())
    if isinstance(exc, ProviderError):
        return " ".join(f"{_provider_words(exc, endpoints)}: {exc.message}".split())
    return " ".join(str(exc).split())


# --- demo -------------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from ._console import PipeConsole
    from .demo import run_demo

    options: dict[str, Any] = {}
    if args.virtual_clock:
        from .testing import VirtualClockLoop

        options["loop_factory"] = VirtualClockLoop
    # With --json the live view goes to stderr and stdout carries only the summary.
    console = PipeConsole(stderr=True) if args.json else PipeConsole()
    summary = anyio.run(
        run_demo, args.duration, args.rate, args.seed, None, console, backend="asyncio", backend_options=options
    )
    if args.json:
        sys.stdout.write(_encode_json(summary) + "\n")
    return EXIT_OK if summary.ok else EXIT_FAILED


# --- chat ---------------------------------------------------------------------------------------------


def _json_schema_file(path: str) -> dict[str, Any]:
    """``--schema FILE``: the JSON schema in the file (checked when the request is built)."""
    try:
        schema = json.loads(Path(path).read_text())
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{path} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise argparse.ArgumentTypeError(f"{path} holds no JSON schema (an object)")
    return schema


def _chat(args: argparse.Namespace) -> int:
    prompt: str = args.prompt
    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise UsageError("the prompt is empty")
    if args.on_interrupt is not None and not args.stream:
        raise UsageError("--on-interrupt is for --stream: a whole reply is printed only once it is complete")
    if getattr(args, "repair", 0) and args.schema is None:
        raise UsageError("--repair is for --schema: only a reply checked against a schema can be repaired")
    rt = load_runtime(args.config)
    endpoints = rt.endpoints
    try:
        reply = anyio.run(_chat_async, rt, prompt, args)
    except LLMError as exc:
        # The errors name the endpoints they could not try and why (an unset key variable).
        return _fail(exc, EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED, args.json, endpoints)
    if reply.provider == "mock":
        # A canned answer must never pass for a model's: say where it came from.
        others = [f"{ep.name}: {problem}" for ep in endpoints if (problem := ep.key_problem())]
        why = f"; {'; '.join(others)}" if others else ""
        print(f"{PROG}: note: the reply is from the mock endpoint {reply.endpoint!r}, not a model{why}", file=sys.stderr)
    if args.json:
        sys.stdout.write(_encode_json(_reply_json(reply)) + "\n")
    elif not args.stream:
        sys.stdout.write(reply.text + ("\n" if not reply.text.endswith("\n") else ""))
    return EXIT_OK


async def _chat_async(rt: Runtime, prompt: str, args: argparse.Namespace) -> ChatResponse:
    options: dict[str, Any] = {
        "model": args.model,
        "endpoint": args.endpoint,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "timeout": args.timeout,
    }
    completion = args.kind == "completion"
    if not completion:
        options.update(system=args.system, response_format=args.schema)
    async with rt:
        if not args.stream:
            if completion:
                return await rt.complete(prompt, **options)
            return await rt.chat(prompt, repair=args.repair, **options)
        printing = not args.json
        printed = False
        opened = rt.stream_complete if completion else rt.stream
        try:
            async with opened(prompt, on_interrupt=args.on_interrupt, **options) as stream:
                async for chunk in stream:
                    if chunk.restart:
                        # A terminal cannot take back what it printed: end the line, say it is void.
                        if printing and printed:
                            sys.stdout.write("\n")
                            printed = False
                        print(f"{PROG}: the answer failed mid-way and restarted on {stream.endpoint!r}; "
                              "the text above is void", file=sys.stderr)
                        continue
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
        "recovery": attempt.recovery,
    }


def _exception_json(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc)}


#: The attributes an error document carries when the error has them.
_ERROR_FIELDS = (
    "endpoint", "provider", "status", "retry_after", "code", "key", "field", "route", "kind",
    "path", "reason", "raw", "repairs",  # InvalidOutput: where the reply broke its schema, and the reply
)


def _error_json(exc: BaseException, code: int, endpoints: Sequence[Endpoint] = ()) -> dict[str, Any]:
    """The one shape of every error: type, message, our explanation, exit code, and what the error knows."""
    data = _exception_json(exc)
    data["explanation"] = explain(exc, endpoints)
    data["exit_code"] = code
    for name in _ERROR_FIELDS:
        value = getattr(exc, name, None)
        if isinstance(value, str | int | float):
            data[name] = value
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


class _Row(msgspec.Struct, frozen=True):
    """One endpoint as ``status`` shows it: the runtime's view, the probe, and the verdict."""

    status: EndpointStatus
    probe: _Probe
    url: str | None

    @property
    def health(self) -> str:
        """``up``-ish verdicts (healthy, degraded) or why not (down, throttled, misconfigured, failed).

        An endpoint whose probe failed is down, whatever the runtime's softer state says
        (one failed probe alone only makes it "degraded" for routing).
        """
        state = self.status.state
        if state in ("misconfigured", "throttled", "failed", "draining"):
            return state
        if not self.probe.ok or state == "unhealthy":
            return "down"
        return state

    @property
    def up(self) -> bool:
        """Whether the endpoint can take requests now."""
        return self.health in ("healthy", "degraded")

    @property
    def error(self) -> str:
        """Why it is not up, in full (empty when it is)."""
        if self.up:
            return ""
        return (self.probe.error or self.status.last_error or "").removeprefix("probe: ")


def _status(args: argparse.Namespace) -> int:
    rt = load_runtime(args.config)
    if args.watch:
        return _watch(rt, args)
    rows: list[_Row] = anyio.run(_probe_once, rt)
    if args.json:
        sys.stdout.write(_encode_json(_status_json(rows)) + "\n")
    else:
        from ._console import PipeConsole

        console = PipeConsole()
        console.print(_status_table(rows, terminal=console.is_terminal, width=console.width))
        # The whole errors below the table: a column wide enough for them would crush the rest.
        for row in rows:
            if row.error:
                console.print(f"{row.status.name}: {_status_words(row)}", markup=False, highlight=False)
        console.print(_status_summary(rows), markup=False, highlight=False)
    return _status_code(rows)


def _status_words(row: _Row) -> str:
    """Why a row is not up, in our words first: what failed where, then what was seen."""
    kind, _, detail = row.error.partition(": ")
    template = _WORDS.get(kind)
    if template is None:
        return row.error
    where = row.url or f"endpoint {row.status.name!r}"
    return f"{template.format(where=where)} ({kind}: {detail.strip()})"


def _status_code(rows: Sequence[_Row]) -> int:
    up = sum(row.up for row in rows)
    if up == len(rows):
        return EXIT_OK
    return EXIT_PARTIAL if up else EXIT_FAILED


def _status_summary(rows: Sequence[_Row]) -> str:
    up = sum(row.up for row in rows)
    down = [row.status.name for row in rows if not row.up]
    return f"{up} of {len(rows)} endpoints up" + (f"; not up: {', '.join(down)}" if down else "")


def _status_json(rows: Sequence[_Row]) -> dict[str, Any]:
    return {
        "up": sum(row.up for row in rows),
        "total": len(rows),
        "exit_code": _status_code(rows),
        "endpoints": [
            {
                # Every field, defaults included, so scripts can rely on the keys.
                **{name: getattr(row.status, name) for name in row.status.__struct_fields__},
                "url": row.url,
                "health": row.health,
                "up": row.up,
                "probe_ok": row.probe.ok,
                "probe_ms": None if row.probe.latency is None else round(row.probe.latency * 1000, 3),
                "error": row.error or None,
            }
            for row in rows
        ],
    }


_HEALTH_STYLE = {"healthy": "green", "degraded": "yellow", "throttled": "yellow"}


def _status_table(rows: Sequence[_Row], *, terminal: bool, width: int = 80) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    cells = [
        (
            row.status.name,
            row.status.provider,
            row.status.model or "-",
            row.health,
            "-" if row.probe.latency is None or not row.probe.ok else f"{row.probe.latency * 1000:.0f} ms",
            str(row.status.in_flight),
            _short_error(row.error),
        )
        for row in rows
    ]
    headers = ("endpoint", "provider", "model", "health", "latency", "active", "error")
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(headers)]
    # Readable at ``width`` columns: health, latency and the in-flight count keep their
    # width; the widest of name, provider, model and error gives way first (ellipsis).
    # The whole error is printed below the table (one-shot) and is in the JSON.
    flexible, least = (0, 1, 2, 6), {0: 7, 1: 6, 2: 6, 6: min(widths[6], 14)}
    gap = 3 if terminal else 2  # the box's column divider is one more space
    available = width - gap * (len(headers) - 1) - sum(w for i, w in enumerate(widths) if i not in flexible)
    while sum(widths[i] for i in flexible) > available:
        widest = max((i for i in flexible if widths[i] > least[i]), key=lambda i: widths[i], default=None)
        if widest is None:
            break
        widths[widest] -= 1
    table = Table(box=box.SIMPLE_HEAD if terminal else None, pad_edge=False, show_edge=False)
    for i, header in enumerate(headers):
        table.add_column(
            header, no_wrap=True, overflow="ellipsis", width=widths[i], justify="right" if i in (4, 5) else "left"
        )
    for cell in cells:
        health = cell[3]
        table.add_row(*cell[:3], Text(health, style=_HEALTH_STYLE.get(health, "bold red")), *cell[4:])
    return table


#: A status error's gist, short enough for the table's last column.
_GIST = {
    "ConnectionFailed": "cannot connect",
    "Timeout": "no answer",
    "RateLimited": "rate limited",
    "Overloaded": "overloaded",
    "ServerError": "server error",
    "AuthenticationFailed": "key refused",
    "NotFound": "not found",
    "ProtocolError": "bad reply",
}


def _short_error(error: str) -> str:
    """The gist of a status error in a few words (``cannot connect``), else its first words."""
    head = error.split(":", 1)[0]
    return _GIST.get(head, head)


async def _probe_all(rt: Runtime) -> list[_Row]:
    """Probe every endpoint of a started runtime at once; one row per endpoint."""
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

    async with anyio.create_task_group() as tg:
        for endpoint in rt.endpoints:
            tg.start_soon(probe, endpoint.name)
    urls = {ep.name: url_of(ep) for ep in rt.endpoints}
    return [_Row(status=s, probe=probes[s.name], url=urls[s.name]) for s in rt.status()]


async def _probe_once(rt: Runtime) -> list[_Row]:
    async with rt:
        return await _probe_all(rt)


def _watch(rt: Runtime, args: argparse.Namespace) -> int:
    from ._console import PipeConsole

    console = PipeConsole()
    rows: list[_Row] = anyio.run(_watch_async, rt, args, console)
    return _status_code(rows)


async def _watch_async(rt: Runtime, args: argparse.Namespace, console: Any) -> list[_Row]:
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    def view(rows: Sequence[_Row], refresh: int) -> Any:
        stamp = Text(f"{_status_summary(rows)}  (refresh {refresh}, every {args.interval:g}s; Ctrl-C to stop)")
        return Group(_status_table(rows, terminal=True, width=console.width), stamp)

    rows: list[_Row] = []
    refresh = 0
    async with rt:
        if args.json or not console.is_terminal:
            # Not a terminal (a pipe, a log): one document or summary line per refresh.
            while args.count is None or refresh < args.count:
                rows = await _probe_all(rt)
                refresh += 1
                if args.json:
                    sys.stdout.write(_encode_json(_status_json(rows)) + "\n")
                else:
                    line = " ".join(f"{row.status.name}={row.health}" for row in rows)
                    sys.stdout.write(f"{_status_summary(rows)}: {line}\n")
                sys.stdout.flush()
                if args.count is None or refresh < args.count:
                    await anyio.sleep(args.interval)
            return rows
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while args.count is None or refresh < args.count:
                rows = await _probe_all(rt)
                refresh += 1
                live.update(view(rows, refresh), refresh=True)
                if args.count is None or refresh < args.count:
                    await anyio.sleep(args.interval)
    return rows


# --- config check -----------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from .gateway.serve import resolved, serve, serve_workers

    path = find_config(args.config)
    config = resolved(load_config(path).gateway if path is not None else GatewayConfig(), args.host, args.port)
    if args.workers > 1:
        argv = [*(["--config", str(path)] if path is not None else []), "--host", config.host]
        return serve_workers(argv, config, args.workers, args.loop)
    serve(load_runtime(args.config), config, loop=args.loop, reuse_port=args.worker, quiet=args.worker)
    return EXIT_OK


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
    if args.json:
        data = _masked_builtins(config)
        data["endpoints"] = [
            {**ep.masked(), "key": _key_status(ep.api_key, ep.key_env, ep.key_problem())} for ep in config.endpoints
        ]
        out.write(_encode_json({"source": source, "valid": True, "config": data}) + "\n")
        return EXIT_OK
    out.write(f"# {source}: valid, {len(config.endpoints)} endpoint(s); resolved, keys masked\n")
    out.write(_resolved_toml(config))
    if missing:
        names = ", ".join(repr(ep.name) for ep in missing)
        out.write(f"# warning: no API key for {names}: set the variable(s) named above\n")
    return EXIT_OK


def _masked_builtins(config: RuntimeConfig) -> dict[str, Any]:
    """The configuration as plain data with the gateway's client keys masked."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    data["gateway"]["keys"] = [key.masked() for key in config.gateway.keys]
    return data


def _resolved_toml(config: RuntimeConfig) -> str:
    """The configuration with every default filled in, as TOML; keys masked, key status as comments."""
    lines: list[str] = []
    data = _masked_builtins(config)
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
