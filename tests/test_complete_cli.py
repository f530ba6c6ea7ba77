"""`llm-runtime complete` and `chat --schema`: text completion and checked JSON from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_cli
from test_cli import Fleet, assert_one_clean_line, run

# The command-line tests' fixtures: two local endpoints (OpenAI echoing, Anthropic) and a config naming them.
fleet = test_cli.fleet
config = test_cli.config
clean_env = test_cli.clean_env

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def test_complete_prints_the_completion(config: Path, fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    """`complete PROMPT` continues the prompt on the endpoint that has a completion API and prints it."""
    code, out, err = run(capsys, "complete", "Once upon a time", "--config", str(config), "--max-tokens", "9")
    assert (code, out, err) == (0, "Once upon a time\n", "")
    assert fleet["primary"].stats.by_path == {"/v1/completions": 1}
    assert fleet["primary"].last_request["max_tokens"] == 9


def test_complete_stream_and_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`complete --stream` prints as it arrives; `--json` prints the whole reply."""
    code, out, _ = run(capsys, "complete", "Once upon a time", "--config", str(config), "--stream")
    assert (code, out) == (0, "Once upon a time\n")
    code, out, _ = run(capsys, "--json", "complete", "Once", "--config", str(config))
    assert code == 0 and json.loads(out)["text"] == "Once" and json.loads(out)["endpoint"] == "primary"


def test_complete_where_no_endpoint_can_is_one_line(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Pinned to the Anthropic endpoint: InvalidRequest in one line, exit 1, nothing sent."""
    code, out, err = run(capsys, "complete", "Once", "--config", str(config), "--endpoint", "backup")
    assert code == 1 and out == ""
    assert_one_clean_line(err)
    assert "no text-completion API on 'backup' (anthropic)" in err


def test_chat_schema_prints_the_checked_json(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`chat --schema FILE`: a reply that matches is printed; --json carries it parsed."""
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    code, out, err = run(capsys, "chat", '{"a": 1}', "--config", str(config), "--schema", str(schema))
    assert (code, out, err) == (0, '{"a": 1}\n', "")
    code, out, _ = run(capsys, "--json", "chat", '{"a": 2}', "--config", str(config), "--schema", str(schema))
    assert code == 0 and json.loads(out)["parsed"] == {"a": 2}


def test_chat_schema_mismatch_names_the_path(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A reply that does not match: InvalidOutput in one line naming the path, exit 1; --repair tries again."""
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    code, out, err = run(capsys, "chat", '{"a": "x"}', "--config", str(config), "--schema", str(schema), "--repair", "1")
    assert code == 1 and out == ""
    assert_one_clean_line(err)
    assert "InvalidOutput" in err and "after 1 repair attempt" in err
    code, out, _ = run(capsys, "--json", "chat", '{"a": "x"}', "--config", str(config), "--schema", str(schema))
    error = json.loads(out)["error"]
    assert (code, error["type"], error["path"], error["raw"], error["repairs"]) == (1, "InvalidOutput", "$.a", '{"a": "x"}', 0)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--schema", "missing.json"], "cannot read missing.json"),
        (["--schema", "bad.json"], "bad.json is not JSON"),
        (["--repair", "2"], "--repair is for --schema"),
        (["--repair", "-1", "--schema", "schema.json"], "must be at least 0"),
    ],
)
def test_schema_usage_errors(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    """A schema file that cannot be read or is not JSON, or --repair without --schema: usage errors, exit 2."""
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    code, out, err = run(capsys, "chat", "hi", "--config", str(config), *argv)
    assert code == 2 and out == "" and says in err
