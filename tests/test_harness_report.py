"""report.json's schema, the HTML page, the PNG, and the `llm-runtime bench` command."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime.cli import main
from runtime.errors import ConfigError
from runtime.harness.report import SCHEMA, Report, load_report

_SHORT = """
name = "short-outage"
description = "The primary answers 503 for 4 s."
duration = 12
[[endpoints]]
name = "primary"
[[endpoints]]
name = "backup"
dialect = "ollama"
[[faults]]
endpoint = "primary"
at = 3
for = 4
outage = 503
[load]
rate = 5
[requests]
stream = 0.5
[runtime.breaker]
failure_threshold = 2
open_for = 2
[runtime.health]
interval = 1
[expect]
max_failures = 0
"""


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "short.toml"
    path.write_text(_SHORT)
    return path


def _bench(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["bench", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_writes_json_html_and_png(
    span_exporter: InMemorySpanExporter, scenario: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One scenario, llm-runtime and the control row: exit 0, three files, a JSON summary on stdout."""
    out_dir = tmp_path / "out"
    code, out, err = _bench(capsys, "run", str(scenario), "--out", str(out_dir), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["passed"] is True and [r["system"] for r in doc["runs"]] == ["llm-runtime", "aiohttp"]
    assert {p.name for p in out_dir.iterdir()} == {"report.json", "report.html", "short-outage.png"}
    assert (out_dir / "short-outage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out_dir / "report.html").read_text()
    assert "data:image/png;base64," in page and "src='http" not in page and "<link" not in page
    assert "[1/2] short-outage · llm-runtime" in err


def test_report_json_follows_the_schema(
    span_exporter: InMemorySpanExporter, scenario: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """report.json decodes strictly into Report: versioned, every documented field, raw series as arrays."""
    _bench(capsys, "run", str(scenario), "--out", str(tmp_path), "--no-plots", "--no-control")
    raw = json.loads((tmp_path / "report.json").read_text())
    assert raw["schema"] == SCHEMA == "llm-runtime.bench/1"
    report = msgspec.json.decode((tmp_path / "report.json").read_bytes(), type=Report, strict=True)
    run = raw["runs"][0]
    for key in (
        "scenario", "system", "control", "requests", "succeeded", "failed", "truncated", "success_rate", "errors",
        "latency_ms", "ttfc_ms", "attempts_per_request_mean", "attempts_per_request_max", "endpoints", "windows",
        "time_to_detect_s", "time_to_recover_s", "cost_usd", "expectations", "passed", "series", "mapping",
    ):
        assert key in run, key
    assert set(run["windows"][0]) >= {"success_rate", "absorbed", "time_to_detect_s", "time_to_recover_s", "latency_ms"}
    first = run["series"]["requests"][0]
    assert isinstance(first, list) and len(first) == 10  # [index, start, end, stream, ok, truncated, endpoint, error, ttfc, attempts]
    assert report.runs[0].windows[0].absorbed > 0  # a 503 outage answers every request it gets
    assert load_report(tmp_path) == report


def test_report_with_another_schema_is_refused(tmp_path: Path) -> None:
    """A report of another schema version is refused naming the key."""
    (tmp_path / "report.json").write_text(json.dumps({"schema": "llm-runtime.bench/0", "runs": []}))
    with pytest.raises(ConfigError) as info:
        load_report(tmp_path)
    assert info.value.key == "schema"


def test_failed_expectation_exits_1(
    span_exporter: InMemorySpanExporter, scenario: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An expectation the run cannot meet makes `bench run` exit 1 (a CI gate)."""
    scenario.write_text(_SHORT + "max_p99_ms = 0.001\n")
    code, out, _ = _bench(capsys, "run", str(scenario), "--out", str(tmp_path), "--no-plots")
    assert code == 1 and "FAIL" in out


def test_report_sets_directories_side_by_side(
    span_exporter: InMemorySpanExporter, scenario: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bench report A B`: every run of both, a clashing name suffixed with its directory."""
    for name in ("a", "b"):
        _bench(capsys, "run", str(scenario), "--out", str(tmp_path / name), "--no-plots", "--no-control")
    code, out, _ = _bench(capsys, "report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "both"), "--json")
    assert code == 0
    assert [r["system"] for r in json.loads(out)["runs"]] == ["llm-runtime", "llm-runtime (b)"]
    assert (tmp_path / "both" / "short-outage.png").exists()


def test_list_and_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`bench list --json` lists the catalogue; an unknown scenario or system exits 2 naming it."""
    code, out, _ = _bench(capsys, "list", "--json")
    assert code == 0 and any(s["name"] == "primary-down-then-healthy" for s in json.loads(out))
    code, _, err = _bench(capsys, "run", "no-such-scenario", "--out", str(tmp_path))
    assert code == 2 and "no-such-scenario" in err
    code, _, err = _bench(capsys, "run", "primary-down-then-healthy", "--system", "nope", "--out", str(tmp_path))
    assert code == 2 and "unknown system 'nope'" in err
