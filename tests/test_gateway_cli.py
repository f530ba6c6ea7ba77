"""``llm-runtime serve`` as a user runs it, and the ``[gateway]`` table of the config file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from runtime.config import parse_config
from runtime.errors import ConfigError

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

ENDPOINT = {"name": "a", "provider": "mock"}


def test_gateway_table_is_validated_naming_the_key() -> None:
    """Unknown keys, bad values and ambiguous key sources are ConfigErrors naming the key."""
    with pytest.raises(ConfigError, match=r"gateway\.prot"):
        parse_config({"endpoints": [ENDPOINT], "gateway": {"prot": 1}})
    with pytest.raises(ConfigError, match=r"gateway\.keys\[k\]\.key"):
        parse_config({"endpoints": [ENDPOINT], "gateway": {"keys": [{"name": "k", "key": "a", "key_env": "B"}]}})
    with pytest.raises(ConfigError, match=r"gateway\.keys\[k\]\.rpm"):
        parse_config({"endpoints": [ENDPOINT], "gateway": {"keys": [{"name": "k", "key": "a", "rpm": 0}]}})
    with pytest.raises(ConfigError, match="duplicate key name"):
        parse_config({"endpoints": [ENDPOINT], "gateway": {"keys": [{"name": "k", "key": "a"}, {"name": "k", "key": "b"}]}})
    config = parse_config({"endpoints": [ENDPOINT], "gateway": {"port": 0, "keys": [{"name": "k", "key": "sk-1", "rpm": 5}]}})
    assert config.gateway.port == 0 and config.gateway.keys[0].rpm == 5
    assert "sk-1" not in repr(config)


def test_gateway_structs_built_in_python_check_their_types() -> None:
    """GatewayConfig and GatewayKey built in Python refuse a value of the wrong type as the
    file loader does, naming the key (a string for ``models`` would otherwise allow its letters)."""
    from runtime.gateway import GatewayConfig, GatewayKey

    with pytest.raises(ConfigError, match=r"gateway\.port.*must be an integer, got '4000'"):
        GatewayConfig(port="4000")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"gateway\.max_concurrency.*must be an integer, got True"):
        GatewayConfig(max_concurrency=True)
    with pytest.raises(ConfigError, match=r"gateway\.keys.*must be a list of GatewayKey tables"):
        GatewayConfig(keys=[{"name": "k", "key": "sk"}])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match=r"gateway\.keys\[k\]\.models.*must be a list of strings, got 'fast'"):
        GatewayKey(name="k", key="sk", models="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"gateway\.keys\[k\]\.rpm.*must be an integer \(or absent\), got '5'"):
        GatewayKey(name="k", key="sk", rpm="5")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"gateway\.keys\.name.*must be a string, got 7"):
        GatewayKey(name=7, key="sk")  # type: ignore[arg-type]


def test_readme_gateway_table_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's [gateway] example parses, every key of it, into the documented values."""
    import re
    import tomllib

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", readme, re.S) if b.startswith("[gateway]"))
    config = parse_config({"endpoints": [ENDPOINT], **tomllib.loads(block)})
    monkeypatch.setenv("TEAM_A_KEY", "sk-a")
    key = config.gateway.keys[0]
    assert config.gateway.port == 4000 and key.rpm == 600 and key.budget is not None and key.digest()


def test_config_check_masks_gateway_keys(tmp_path: Path) -> None:
    """`config check` shows the gateway keys' settings, never the key or its digest."""
    path = tmp_path / "runtime.toml"
    path.write_text(
        '[[endpoints]]\nname = "a"\nprovider = "mock"\n'
        '[[gateway.keys]]\nname = "k"\nkey = "sk-very-secret"\n'
        '[[gateway.keys]]\nname = "h"\nkey_sha256 = "' + "ab" * 32 + '"\n'
    )
    for extra in ([], ["--json"]):
        out = subprocess.run(
            [sys.executable, "-m", "runtime", "config", "check", str(path), *extra], capture_output=True, text=True, check=True
        ).stdout
        assert "sk-very-secret" not in out and "ab" * 32 not in out and '"k"' in out


@contextmanager
def process(args: list[str], cwd: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A child process and the first line it prints (its URL); killed if still running at the end."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env) as child:
        try:
            assert child.stdout is not None
            url = child.stdout.readline().strip()
            assert url.startswith("http://"), child.stderr.read() if child.stderr else url
            yield child, url
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=30)


def _config(tmp_path: Path, upstream: str, extra: str = "") -> Path:
    path = tmp_path / "runtime.toml"
    path.write_text(
        f'[[endpoints]]\nname = "local"\nprovider = "openai-compatible"\nmodel = "gpt-4o-mini"\n'
        f'base_url = "{upstream}"\ngroups = ["fast"]\n[gateway]\nport = 0\n{extra}'
    )
    return path


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_answers_both_clients_and_drains_on_sigterm(tmp_path: Path, workers: int) -> None:
    """`llm-runtime serve` prints its URL, answers the openai and anthropic clients, and exits 0 on SIGTERM."""
    server = [sys.executable, "-m", "runtime.testing.server", "--port", "0", "--name", "up"]
    with process(server, tmp_path) as (_, upstream):
        config = _config(tmp_path, upstream, '[[gateway.keys]]\nname = "k"\nkey = "sk-gw"\n')
        serve = [sys.executable, "-m", "runtime", "serve", "--config", str(config), "--workers", str(workers)]
        with process(serve, tmp_path) as (gateway, url):
            oai = openai.OpenAI(base_url=url + "/v1", api_key="sk-gw", max_retries=0, timeout=30)
            replies = [oai.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}]) for _ in range(4)]
            claude = anthropic.Anthropic(base_url=url, api_key="sk-gw", max_retries=0, timeout=30)
            message = claude.messages.create(model="fast", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
            oai.close()
            claude.close()
            gateway.send_signal(signal.SIGTERM)
            code = gateway.wait(timeout=60)
            note = gateway.stderr.read() if gateway.stderr else ""
    assert all(r.choices[0].message.content == "This is a reply from up." for r in replies)
    assert message.content[0].text == "This is a reply from up."
    assert code == 0 and "ready at" in note and "sk-gw" not in note


def test_serve_without_keys_binds_loopback(tmp_path: Path) -> None:
    """With no keys configured, asking for 0.0.0.0 still listens on 127.0.0.1 only, and says so."""
    config = _config(tmp_path, "http://127.0.0.1:9/v1")
    serve = [sys.executable, "-m", "runtime", "serve", "--config", str(config), "--host", "0.0.0.0"]
    with process(serve, tmp_path) as (gateway, url):
        gateway.send_signal(signal.SIGTERM)
        code = gateway.wait(timeout=60)
        note = gateway.stderr.read() if gateway.stderr else ""
    assert url.startswith("http://127.0.0.1:") and code == 0
    assert "loopback" in note or "127.0.0.1 only" in note


def test_status_json_matches_runtime_status_fields(tmp_path: Path) -> None:
    """/status carries every field of rt.status() per endpoint."""
    import urllib.request

    config = _config(tmp_path, "http://127.0.0.1:9/v1")
    serve = [sys.executable, "-m", "runtime", "serve", "--config", str(config)]
    with process(serve, tmp_path) as (gateway, url):
        with urllib.request.urlopen(url + "/status", timeout=30) as resp:
            status = json.loads(resp.read())
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=60)
    fields = {"name", "provider", "model", "state", "breaker", "in_flight", "latency_ms"}
    assert fields <= set(status["endpoints"][0]) and status["gateway"]["draining"] is False


@pytest.mark.timeout(120)
def test_key_rpm_is_one_limit_for_two_gateway_processes_on_one_redis(tmp_path: Path) -> None:
    """Two `llm-runtime serve` processes with one [shared] Redis admit a key's rpm between
    them, not each: rpm = 4, ten requests alternating between the two, four answered.
    (Without [shared] each process would admit four.)"""
    from runtime.cluster.server import RedisServer

    server = [sys.executable, "-m", "runtime.testing.server", "--port", "0", "--name", "up"]
    with RedisServer() as redis_server, process(server, tmp_path) as (_, upstream):
        extra = (
            '[[gateway.keys]]\nname = "k"\nkey = "sk-gw"\nrpm = 4\n'
            # timeout: a Redis call slowed past it by a loaded machine would make a process
            # serve on its own limits
            f'[shared]\nurl = "{redis_server.url}"\nprefix = "t-gateway-key-rpm"\ntimeout = 5.0\n'
        )
        serve = [sys.executable, "-m", "runtime", "serve", "--config", str(_config(tmp_path, upstream, extra))]
        with process(serve, tmp_path) as (_, url_a), process(serve, tmp_path) as (_, url_b):
            clients = [openai.OpenAI(base_url=url + "/v1", api_key="sk-gw", max_retries=0, timeout=30) for url in (url_a, url_b)]
            answered, refused = [], []
            for i in range(10):
                try:
                    clients[i % 2].chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
                    answered.append(i % 2)
                except openai.RateLimitError as exc:
                    refused.append((i % 2, exc.response.headers.get("Retry-After"), exc.code))
            for client in clients:
                client.close()
    assert url_a != url_b and sorted(answered) == [0, 0, 1, 1]
    assert len(refused) == 6 and {p for p, _, _ in refused} == {0, 1}
    assert all(int(after) >= 1 and code == "rate_limit_exceeded" for _, after, code in refused)
