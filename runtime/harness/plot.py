"""One PNG per scenario: what the traffic did, on one time axis (matplotlib, the ``[plot]`` extra).

Panels, top to bottom, every fault window shaded across all of them:

1. who served each request, stacked per time bucket (whole answers by endpoint, then
   truncated answers and failures) — for the first system of the scenario;
2. the success rate per bucket, one line per system;
3. rolling p50 (solid) and p99 (dashed) latency, one colour per system;
4. each endpoint's breaker state as a lane (closed / half-open / open), from llm-runtime's
   transitions (empty for systems that do not report theirs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .metrics import RunResult, percentile

__all__ = ["plot_scenario", "plotting_available"]

_ENDPOINT_COLOURS = ["#4c72b0", "#55a868", "#8172b2", "#64b5cd", "#937860", "#8c8c8c"]
_SYSTEM_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]
_BREAKER_COLOURS = {"closed": "#55a868", "half_open": "#f0b429", "open": "#c44e52"}


def plotting_available() -> bool:
    """True when matplotlib is installed (``pip install 'llm-runtime[plot]'``)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _bucket(duration: float) -> float:
    """A round bucket width giving about 60-150 buckets."""
    return next((w for w in (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0) if duration / w <= 150), 60.0)


def plot_scenario(runs: Sequence[RunResult], path: Path) -> None:
    """Draw the runs of one scenario (one or several systems) into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = runs[0]
    names = first.endpoint_names
    end = max([first.duration_s] + [r.end for run in runs for r in run.series.requests])
    width = _bucket(end)
    edges = [i * width for i in range(int(end / width) + 2)]
    rows = len(first.windows) + len(names)
    fig, axes = plt.subplots(
        4, 1, sharex=True, figsize=(11, 8 + 0.2 * rows), gridspec_kw={"height_ratios": [3, 1.6, 2, 0.5 + 0.3 * rows]}
    )
    served, rate, latency, lanes = axes
    for ax in axes:
        for w in first.windows:
            ax.axvspan(w.start, max(w.end, w.start + width / 2), color="#f4a6a6", alpha=0.25, lw=0)
    _served(served, first, names, edges, width)
    for i, run in enumerate(runs):
        colour = _SYSTEM_COLOURS[i % len(_SYSTEM_COLOURS)]
        _success(rate, run, edges, width, colour)
        _latency(latency, run, edges, width, colour)
    _lanes(lanes, next((r for r in runs if r.series.transitions), first), names, end)
    served.set_title(f"{first.scenario}: {first.description}"[:140], fontsize=9, loc="left")
    served.set_ylabel(f"requests / {width:g} s")
    rate.set_ylabel("success")
    rate.set_ylim(-0.05, 1.05)
    rate.legend(fontsize=7, loc="lower left")
    latency.set_ylabel("latency ms")
    latency.set_ylim(bottom=0)
    latency.legend(fontsize=7, loc="upper left", ncol=2)
    lanes.set_xlabel("seconds")
    lanes.set_xlim(0, end)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _counts(times: list[float], edges: list[float]) -> list[int]:
    out = [0] * (len(edges) - 1)
    width = edges[1] - edges[0]
    for t in times:
        out[min(len(out) - 1, max(0, int(t / width)))] += 1
    return out


def _served(ax: Any, run: RunResult, names: list[str], edges: list[float], width: float) -> None:
    reqs = run.series.requests
    layers = [[r.start for r in reqs if r.ok and not r.truncated and r.endpoint == name] for name in names]
    labels = [f"served by {name}" for name in names]
    colours = [_ENDPOINT_COLOURS[i % len(_ENDPOINT_COLOURS)] for i in range(len(names))]
    layers += [[r.start for r in reqs if r.ok and r.truncated], [r.start for r in reqs if not r.ok]]
    labels += ["truncated", "failed"]
    colours += ["#ff9f1c", "#d62728"]
    xs = edges[:-1]
    ax.stackplot(xs, *[_counts(layer, edges) for layer in layers], labels=labels, colors=colours, step="post", alpha=0.9)
    ax.legend(fontsize=7, loc="upper right", ncol=3, title=run.system, title_fontsize=7)


def _success(ax: Any, run: RunResult, edges: list[float], width: float, colour: str) -> None:
    xs, ys = [], []
    buckets: dict[int, list[bool]] = {}
    for r in run.series.requests:
        buckets.setdefault(int(r.start / width), []).append(r.ok and not r.truncated)
    for k in sorted(buckets):
        xs.append(k * width)
        ys.append(sum(buckets[k]) / len(buckets[k]))
    ax.step(xs, ys, where="post", color=colour, lw=1.2, label=run.system)


def _latency(ax: Any, run: RunResult, edges: list[float], width: float, colour: str) -> None:
    span = 4 * width  # the rolling window
    done = sorted((r.start, r.end - r.start) for r in run.series.requests if r.ok)
    xs, p50, p99 = [], [], []
    lo = 0
    for x in edges[:-1]:
        while lo < len(done) and done[lo][0] < x - span:
            lo += 1
        window = sorted(d for s, d in done[lo:] if s < x + width)
        xs.append(x)  # NaN where nothing was answered: a gap, not a line across it
        p50.append(1000 * (percentile(window, 50) or math.nan))
        p99.append(1000 * (percentile(window, 99) or math.nan))
    ax.plot(xs, p50, color=colour, lw=1.2, label=f"{run.system} p50")
    ax.plot(xs, p99, color=colour, lw=1.0, ls="--", label=f"{run.system} p99")


def _lanes(ax: Any, run: RunResult, names: list[str], end: float) -> None:
    """The faults, one lane each (labelled), above each endpoint's breaker lane."""
    windows = run.windows
    labels = [f"{n} breaker" for n in names] + [f"fault: {w.endpoint}" for w in reversed(windows)]
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    for i, w in enumerate(reversed(windows)):
        lane = len(names) + i
        width = max(w.end - w.start, end / 200)
        ax.broken_barh([(w.start, width)], (lane - 0.35, 0.7), color="#f4a6a6")
        ax.text(w.start + end / 200, lane, w.label, fontsize=7, va="center", ha="left", color="#722")
    if not run.series.transitions:
        ax.text(0.5, (len(names) / 2) / len(labels), f"{run.system} reports no breaker states", transform=ax.transAxes,
                ha="center", va="center", fontsize=8, color="#777")
        return
    for lane, name in enumerate(names):
        state, since = "closed", 0.0
        segments: list[tuple[float, float, str]] = []
        for t in run.series.transitions:
            if t.kind == "breaker" and t.endpoint == name:
                segments.append((since, t.at, state))
                state, since = t.to_state, t.at
        segments.append((since, end, state))
        for a, b, s in segments:
            ax.broken_barh([(a, max(b - a, 1e-3))], (lane - 0.35, 0.7), color=_BREAKER_COLOURS.get(s, "#999"))
    handles = [_patch(colour, state) for state, colour in _BREAKER_COLOURS.items()]
    ax.legend(handles=handles, fontsize=7, loc="lower right", ncol=3, bbox_to_anchor=(1.0, 1.0), frameon=False)


def _patch(colour: str, label: str) -> Any:
    """A legend swatch."""
    from matplotlib.patches import Patch

    return Patch(color=colour, label=label)
