"""``llm-runtime bench``: list the catalogue, run scenarios, set reports side by side.

::

    llm-runtime bench list
    llm-runtime bench run [NAME|FILE ...] [--system S ...] [--config F] [--out DIR] [--seed N]
                          [--clock virtual|real] [--jobs N] [--no-control] [--no-plots]
    llm-runtime bench report DIR ... [--out DIR]

``run`` without a scenario runs the whole catalogue. It exits 1 when a gated run (any
system but the aiohttp control row) misses an expectation, so it can gate a CI job;
bad scenarios, systems or files raise :class:`~runtime.errors.ConfigError` (exit 2).
Scenarios run on the fast-forwarding clock by default: the fault timeline and every
timeout pass in virtual time while the sockets stay real, so the catalogue takes a
couple of minutes; ``--clock real`` runs them on the wall clock.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import anyio
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .._console import PipeConsole
from ..errors import ConfigError
from ._catalogue import catalogue, resolve
from .metrics import RunResult, score
from .report import SUMMARY_HEADER, Report, load_report, merge_reports, new_report, summary_rows, write_report
from .runner import RequestRecord, RunObserver, run_scenario
from .scenario import Scenario
from .systems import BareAiohttp, System, Unsupported, system_from_spec

__all__ = ["add_bench", "run_all"]

def add_bench(commands: Any, command: Callable[..., argparse.ArgumentParser], parser_class: type) -> None:
    """Add ``bench`` and its actions to the CLI's subcommands (``command`` is the CLI's own helper)."""
    bench = commands.add_parser(
        "bench", help="failover benchmark: scenarios against a system, a report",
        description="Run failover scenarios (fault-injecting local endpoints, a fault timeline, a load) "
        "against llm-runtime or another system and report what callers got and what endpoints saw.",
    )
    actions = bench.add_subparsers(dest="bench_command", metavar="ACTION", parser_class=parser_class)
    actions.required = True
    command(actions, "list", _list, configured=False, help="list the built-in scenarios",
            description="List the built-in scenarios with what each one does.")
    run = command(
        actions, "run", _run, help="run scenarios and write report.json, report.html and PNGs",
        description="Run scenarios (built-in names or TOML files; none: the whole catalogue) against each "
        "--system; exit 1 when an expectation fails. --config is a runtime.toml for llm-runtime, its "
        "endpoints mapped onto the scenario's fakes.",
    )
    run.add_argument("scenarios", nargs="*", metavar="NAME|FILE", help="built-in scenario or scenario file (default: all)")
    run.add_argument("--system", action="append", metavar="S", help="llm-runtime (default), litellm, openai, aiohttp, "
                     "url=URL[,model=M]; repeat to compare")
    run.add_argument("--out", metavar="DIR", default="bench-report", help="where the report goes (default: ./bench-report)")
    run.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the load, the faults and the runtime (default: 0)")
    run.add_argument("--clock", choices=["virtual", "real"], default="virtual",
                     help="virtual: timeouts and the timeline fast-forward (default); real: the wall clock")
    run.add_argument("--no-control", action="store_true", help="leave out the bare aiohttp control row")
    run.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), metavar="N",
                     help="scenarios run in N worker processes at once (default: 2, or 1 on one core)")
    run.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    report = command(actions, "report", _report, configured=False, help="set earlier reports side by side",
                     description="Read report.json from each DIR and write one report with every run side by side.")
    report.add_argument("dirs", nargs="+", metavar="DIR", help="directories holding a report.json")
    report.add_argument("--out", metavar="DIR", default="bench-compare", help="where the report goes (default: ./bench-compare)")
    report.add_argument("--no-plots", action="store_true", help="skip the PNGs")


# --- list ------------------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    scenarios = catalogue()
    if args.json:
        rows = [{"name": s.name, "description": s.description, "duration_s": s.duration, "faults": len(s.faults)}
                for s in scenarios.values()]
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
        return 0
    width = max(len(name) for name in scenarios)
    for s in scenarios.values():
        print(f"{s.name:<{width}}  {s.duration:>5g} s  {s.description}")
    return 0


# --- run -------------------------------------------------------------------------------------------


class _Progress(RunObserver):
    """A progress bar on a terminal (redrawn from the loop, at most ten times a second), plain lines otherwise."""

    def __init__(self, console: Console, total: int) -> None:
        self._console = console
        self._bar: Progress | None = None
        if console.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=console, auto_refresh=False,
            )
            self._runs = self._bar.add_task("scenarios", total=total)
            self._requests = self._bar.add_task("requests", total=None)
        self._drawn = 0.0

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def begin(self, scenario: Scenario, system: System, expected: int) -> None:
        if self._bar is not None:
            self._bar.update(self._requests, description=f"{scenario.name} · {system.name}", completed=0, total=expected)
            self._bar.refresh()

    def done(self, record: RequestRecord) -> None:
        if self._bar is None:
            return
        self._bar.advance(self._requests)
        now = time.monotonic()
        if now - self._drawn > 0.1:
            self._drawn = now
            self._bar.refresh()

    def finished(self, result: RunResult, position: str) -> None:
        verdict = "control" if result.control else ("pass" if result.passed else "FAIL")
        line = (
            f"{position} {result.scenario} · {result.system}: {result.succeeded}/{result.requests} whole, "
            f"{result.failed} failed, {result.truncated} truncated, {result.wall_s:.1f} s · {verdict}"
        )
        if self._bar is not None:
            self._bar.advance(self._runs)
            self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
            self._bar.refresh()
        else:
            self._console.print(line, markup=False, highlight=False, soft_wrap=True)


def _expected(s: Scenario) -> int | None:
    if s.load.concurrency is not None:
        return None
    return (int(s.duration * s.load.rate) if s.load.rate else 0) + sum(b.n for b in s.load.bursts)


async def run_all(
    scenarios: Sequence[Scenario], systems: Sequence[System], *, seed: int = 0, progress: _Progress | None = None
) -> list[RunResult]:
    """Run every scenario against every system, one after the other; scored results in order."""
    results = []
    total = len(scenarios) * len(systems)
    for i, scenario in enumerate(scenarios):
        for j, system in enumerate(systems):
            if progress is not None:
                progress.begin(scenario, system, _expected(scenario) or 0)
            try:
                record = await run_scenario(scenario, system, seed=seed, observer=progress)
            except Unsupported as exc:
                print(f"skipped {scenario.name} · {system.name}: {exc}", file=sys.stderr)
                continue
            result = score(record)
            results.append(result)
            if progress is not None:
                progress.finished(result, f"[{i * len(systems) + j + 1}/{total}]")
    return results


def _systems(specs: Sequence[str], config: str | None, control: bool) -> list[System]:
    if config and "llm-runtime" not in specs:
        raise ConfigError("--config configures llm-runtime: add --system llm-runtime", key="config")
    systems = [system_from_spec(spec, config=config) for spec in specs]
    if control and not any(isinstance(s, BareAiohttp) for s in systems):
        systems.append(BareAiohttp())
    return systems


def _loop_options(clock: str) -> dict[str, Any]:
    if clock != "virtual":
        return {}
    from ..testing import VirtualClockLoop

    return {"loop_factory": VirtualClockLoop}


def _job(scenario: Scenario, specs: list[str], config: str | None, control: bool, seed: int, clock: str) -> bytes:
    """One scenario against every system, in a worker process; the results as msgpack."""
    systems = _systems(specs, config, control)
    results = anyio.run(lambda: run_all([scenario], systems, seed=seed), backend="asyncio", backend_options=_loop_options(clock))
    return msgspec.msgpack.encode(results)


def _run(args: argparse.Namespace) -> int:
    scenarios = [resolve(name) for name in args.scenarios] if args.scenarios else list(catalogue().values())
    specs: list[str] = args.system or ["llm-runtime"]
    systems = _systems(specs, args.config, not args.no_control)  # refuses bad names before anything starts
    if args.jobs < 1:
        raise ConfigError(f"must be at least 1, got {args.jobs}", key="jobs")
    console = PipeConsole(stderr=True)
    jobs = min(args.jobs, len(scenarios))
    if jobs <= 1:
        with _Progress(console, len(scenarios) * len(systems)) as progress:
            results = anyio.run(
                lambda: run_all(scenarios, systems, seed=args.seed, progress=progress),
                backend="asyncio", backend_options=_loop_options(args.clock),
            )
    else:
        results = _run_parallel(scenarios, specs, args, console, jobs, len(systems))
    if not results:
        raise ConfigError("no system could run these scenarios", key="system")
    report = new_report(results, args.seed)
    return _publish(report, Path(args.out), args)


def _run_parallel(
    scenarios: Sequence[Scenario], specs: list[str], args: argparse.Namespace, console: Console, jobs: int, per: int
) -> list[RunResult]:
    """Scenarios spread over ``jobs`` worker processes (each its own event loop and fakes); results in order."""
    # spawn, not fork: a forked child would inherit the parent's threads' locks (telemetry exporters).
    context = multiprocessing.get_context("spawn")
    done: dict[int, list[RunResult]] = {}
    with _Progress(console, len(scenarios) * per) as progress, ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = {
            pool.submit(_job, s, specs, args.config, not args.no_control, args.seed, args.clock): i
            for i, s in enumerate(scenarios)
        }
        finished = 0
        for future in as_completed(futures):
            results = msgspec.msgpack.decode(future.result(), type=list[RunResult])
            done[futures[future]] = results
            for result in results:
                finished += 1
                progress.finished(result, f"[{finished}/{len(scenarios) * per}]")
    return [r for i in sorted(done) for r in done[i]]


def _publish(report: Report, out: Path, args: argparse.Namespace) -> int:
    written = write_report(report, out, plots=not args.no_plots)
    if args.json:
        rows = [dict(zip(SUMMARY_HEADER, row, strict=True)) for row in summary_rows(report.runs)]
        doc = {"report": str(out / "report.json"), "passed": report.passed, "files": [str(p) for p in written], "runs": rows}
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
    else:
        table = Table(title=f"written to {out}/: report.json, report.html and {len(written) - 2} PNG(s)")
        for name in SUMMARY_HEADER:
            table.add_column(name, no_wrap=True)
        for row in summary_rows(report.runs):
            table.add_row(*row)
        console = PipeConsole()
        if not console.is_terminal:  # a file or a pipe: the whole table, not one squeezed to 80 columns
            console = PipeConsole(width=170)
        console.print(table)
    return 0 if report.passed else 1


# --- report ----------------------------------------------------------------------------------------


def _report(args: argparse.Namespace) -> int:
    reports = [(Path(d).name or str(d), load_report(d)) for d in args.dirs]
    merged = merge_reports(reports)
    _publish(merged, Path(args.out), args)
    return 0
