"""The report: ``report.json`` (versioned schema), a self-contained ``report.html``, one PNG per scenario.

``report.json`` is one :class:`Report`: ``schema`` (``"llm-runtime.bench/1"``; a new
major number means a field changed meaning or went away, new fields are added with
defaults), ``created`` (UTC, ISO 8601), ``seed`` and ``runs``, one :class:`RunResult` per
scenario and system. A run's ``series`` holds the raw timeline (requests, what the fakes
saw, breaker transitions) so that ``llm-runtime bench report DIR...`` can draw everything
again, and set several runs side by side, from the JSON alone. Request and arrival records
are arrays (``[index, start, end, stream, ok, truncated, endpoint, error, ttfc, attempts]``
and ``[at, endpoint, kind, request, action, status]``) to keep the file small.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

from ..errors import ConfigError
from .metrics import RunResult

__all__ = ["SCHEMA", "Report", "load_report", "merge_reports", "write_report"]

#: The schema name and major version of ``report.json``.
SCHEMA = "llm-runtime.bench/1"


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """The whole ``report.json``."""

    schema: str
    created: str
    seed: int
    runs: list[RunResult]

    def scenarios(self) -> list[str]:
        """Scenario names in the order they first appear."""
        return list(dict.fromkeys(r.scenario for r in self.runs))

    @property
    def passed(self) -> bool:
        """Every gated run (not a control row) met its expectations."""
        return all(r.passed for r in self.runs if not r.control)


def new_report(runs: Sequence[RunResult], seed: int) -> Report:
    """A report of ``runs``, stamped now."""
    created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    return Report(schema=SCHEMA, created=created, seed=seed, runs=list(runs))


def load_report(path: str | Path) -> Report:
    """Read ``report.json`` (or the one inside a directory); refuses another schema."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror or exc}", key="report") from None
    try:
        head = msgspec.json.decode(raw, type=dict[str, object])
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{p} is not JSON: {exc}", key="report") from None
    schema = str(head.get("schema", ""))
    if schema != SCHEMA:
        raise ConfigError(f"{p} has schema {schema!r}; this version reads {SCHEMA!r}", key="schema")
    try:
        return msgspec.json.decode(raw, type=Report)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{p} does not follow {SCHEMA}: {exc}", key="report") from None


def merge_reports(reports: Iterable[tuple[str, Report]]) -> Report:
    """Several reports as one; runs keep their system name, suffixed with their label when two would clash."""
    runs: list[RunResult] = []
    seen: set[tuple[str, str]] = set()
    seed = 0
    for label, report in reports:
        seed = report.seed
        for run in report.runs:
            if (run.scenario, run.system) in seen:
                run = msgspec.structs.replace(run, system=f"{run.system} ({label})")
            seen.add((run.scenario, run.system))
            runs.append(run)
    return new_report(runs, seed)


def write_report(report: Report, out: str | Path, *, plots: bool = True) -> list[Path]:
    """Write ``report.json``, one PNG per scenario (when matplotlib is installed) and
    ``report.html`` into ``out``; returns the files written."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / "report.json"]
    written[0].write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=1))
    pictures: dict[str, Path] = {}
    if plots:
        from .plot import plot_scenario, plotting_available

        if plotting_available():
            for name in report.scenarios():
                path = directory / f"{name}.png"
                plot_scenario([r for r in report.runs if r.scenario == name], path)
                pictures[name] = path
                written.append(path)
    page = directory / "report.html"
    page.write_text(render_html(report, pictures), encoding="utf-8")
    written.append(page)
    return written


# --- HTML ------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
.pass{background:#e6f4ea}.fail{background:#fce8e6}.control{color:#777}
img{max-width:100%;border:1px solid #ddd}
code{background:#f4f4f4;padding:0 .2em}
"""


def _num(value: float | int | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}{unit}" if abs(value) < 1000 else f"{value:,.0f}{unit}"
    return f"{value}{unit}"


def summary_rows(runs: Sequence[RunResult]) -> list[list[str]]:
    """The side-by-side table: one row per run (shared by the HTML and the terminal)."""
    rows = []
    for r in runs:
        rate = None if r.success_rate is None else r.success_rate * 100
        verdict = "control" if r.control else ("pass" if r.passed else "FAIL")
        rows.append([
            r.scenario, r.system, str(r.requests), _num(rate, "%"), str(r.failed), str(r.truncated),
            _num(r.time_to_detect_s, " s"), _num(r.time_to_recover_s, " s"), _num(r.attempts_per_request_mean),
            _num(r.latency_ms.p50), _num(r.latency_ms.p99), _num(r.cost_usd), verdict,
        ])
    return rows


#: The columns of :func:`summary_rows`.
SUMMARY_HEADER = [
    "scenario", "system", "requests", "success", "failed", "truncated", "detect", "recover",
    "attempts/req", "p50 ms", "p99 ms", "cost USD", "result",
]


def render_html(report: Report, pictures: dict[str, Path]) -> str:
    """The report as one HTML page: the PNGs are embedded, nothing is fetched."""
    e = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>llm-runtime bench report</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>llm-runtime bench report</h1><p>{e(report.created)} · seed {report.seed} · schema <code>{e(report.schema)}</code>"
        f" · {'all expectations met' if report.passed else '<b>expectations failed</b>'}</p>",
        _table(SUMMARY_HEADER, summary_rows(report.runs), report.runs),
    ]
    for name in report.scenarios():
        runs = [r for r in report.runs if r.scenario == name]
        first = runs[0]
        out.append(f"<h2 id='{e(name)}'>{e(name)}</h2><p>{e(first.description)}</p>")
        faults = "".join(
            f"<li>{w.start:g}–{w.end:g} s: {e(w.endpoint)} {e(w.label)}</li>" for w in first.windows
        )
        out.append(f"<ul>{faults or '<li>no faults</li>'}</ul>")
        if name in pictures:
            data = base64.b64encode(pictures[name].read_bytes()).decode()
            out.append(f"<img alt='{e(name)} timeline' src='data:image/png;base64,{data}'>")
        for r in runs:
            out.append(_run_detail(r))
    out.append("</body></html>")
    return "\n".join(out)


def _table(header: list[str], rows: list[list[str]], runs: Sequence[RunResult] | None = None) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = ""
        if runs is not None:
            css = "control" if runs[i].control else ("pass" if runs[i].passed else "fail")
        body.append(f"<tr class='{css}'>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _run_detail(r: RunResult) -> str:
    e = html.escape
    parts = [f"<h3>{e(r.system)}{' (control)' if r.control else ''}</h3>"]
    parts.append("<p>" + "<br>".join(e(line) for line in r.mapping) + "</p>")
    errors = ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "none"
    parts.append(
        f"<p>errors seen by callers: {e(errors)} · time to first chunk p50/p99 "
        f"{_num(r.ttfc_ms.p50)} / {_num(r.ttfc_ms.p99)} ms · attempts per request max "
        f"{_num(r.attempts_per_request_max)} ({e(r.attempts_source)})</p>"
    )
    if r.windows:
        rows = [
            [f"{w.endpoint}: {w.label}", f"{w.start:g}–{w.end:g} s", str(w.requests), _num(None if w.success_rate is None else w.success_rate * 100, "%"),
             str(w.failed), str(w.truncated), str(w.absorbed), _num(w.latency_ms.p99), _num(w.time_to_detect_s), _num(w.time_to_recover_s)]
            for w in r.windows
        ]
        parts.append(_table(["fault", "window", "requests", "success", "failed", "truncated", "absorbed", "p99 ms", "detect s", "recover s"], rows))
    rows = [
        [name, str(ep.priority), str(ep.received), _num(ep.attempts), str(ep.probes), str(ep.injected), str(ep.served), _num(ep.cost_usd)]
        for name, ep in r.endpoints.items()
    ]
    parts.append(_table(["endpoint", "priority", "received", "attempts", "probes", "faulted", "served", "cost USD"], rows))
    if r.expectations:
        rows = [[x.name, _num(x.limit), _num(x.actual), "pass" if x.passed else "FAIL"] for x in r.expectations]
        parts.append(_table(["expectation", "limit", "actual", "result"], rows))
    return "\n".join(parts)
