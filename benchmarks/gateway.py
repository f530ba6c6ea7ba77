"""What the gateway costs: the openai client direct to an upstream vs through ``llm-runtime serve``.

Three processes, side by side in one run: a local OpenAI-compatible upstream
(``python -m runtime.testing.server``), the gateway (``python -m runtime serve`` over one
endpoint on that upstream, with ``--loop uvloop`` and, for comparison, ``--loop asyncio``),
and this one, the client (the official ``openai.AsyncOpenAI``). The same requests go

  (a) direct: the openai client to the upstream,
  (b) through a bare aiohttp proxy (read, POST upstream, answer: the floor under any
      aiohttp gateway, so what the hop itself costs on this machine is seen apart),
      on uvloop and on asyncio,
  (c) through the gateway (uvloop), (d) through the gateway (asyncio) (without the
      ``uvloop`` extra installed, (b) and (c) run on asyncio alone),
  (e) through LiteLLM's proxy, when ``litellm[proxy]`` is installed (``--litellm PATH``
      names its executable in another environment), with its defaults otherwise.

Concurrency 1: the modes alternate in blocks of 50 requests, so drift on a shared
machine hits them alike; median and p99 latency and what each adds over (a).
Concurrency 64: throughput as a ratio of (a)'s, rounds alternating. Memory: the gateway
process's resident set size (``/proc/PID/status``) before and after ``--memory-requests``
requests sent by a bare aiohttp client at concurrency 64 (the openai client costs more
CPU per request than the gateway and would only slow the count). All three processes
share the machine's cores: read the ratios and the added microseconds.

    python benchmarks/gateway.py [--requests 2000] [--concurrency 64] [--memory-requests 100000] [--litellm PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import msgspec
from _common import pct, samples, start_child, start_server, throughput

MESSAGES = [{"role": "user", "content": "Say hi"}]
BLOCK = 50
ROUNDS = 5


# The floor any aiohttp gateway stands on: read the body, POST it upstream on a pooled
# session, answer with what came back; no routing, no validation, no accounting.
FLOOR_PROXY = """
import asyncio, sys
import aiohttp
from aiohttp import web
if sys.argv[2] == "uvloop":
    import uvloop
else:
    uvloop = None

async def main(upstream):
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    async def proxy(request):
        body = await request.read()
        async with session.post(upstream + "/chat/completions", data=body, headers={"content-type": "application/json"}) as resp:
            data = await resp.read()
        return web.Response(body=data, content_type="application/json")
    app = web.Application()
    app.router.add_post("/v1/chat/completions", proxy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()

(uvloop.run if uvloop else asyncio.run)(main(sys.argv[1]))
"""


def gateway_config(directory: Path, upstream: str) -> Path:
    path = directory / "runtime.toml"
    path.write_text(
        "[[endpoints]]\n"
        'name = "up"\nprovider = "openai-compatible"\nmodel = "bench"\n'
        f'base_url = "{upstream}"\ntimeout = 30\n'
        "[endpoints.health]\nenabled = false\n"
        "[gateway]\nport = 0\nmax_concurrency = 4096\n"
    )
    return path


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def latency_table(modes: dict[str, Callable[[], Awaitable[None]]], requests: int) -> None:
    seconds = await samples(modes, requests, BLOCK)
    base_med, base_p99 = statistics.median(seconds["direct"]), pct(seconds["direct"], 0.99)
    print(f"{'mode':<24}{'median µs':>11}{'p99 µs':>11}{'added p50 µs':>14}{'added p99 µs':>14}")
    for name, s in seconds.items():
        med, p99 = statistics.median(s), pct(s, 0.99)
        print(f"{name:<24}{med * 1e6:>11.0f}{p99 * 1e6:>11.0f}{(med - base_med) * 1e6:>14.0f}{(p99 - base_p99) * 1e6:>14.0f}")


async def throughput_table(modes: dict[str, Callable[[], Awaitable[None]]], requests: int, concurrency: int) -> None:
    rates: dict[str, list[float]] = {name: [] for name in modes}
    per_round = max(concurrency * 4, requests // ROUNDS)
    for _ in range(ROUNDS):
        for name, fn in modes.items():
            rates[name].append(await throughput(fn, per_round, concurrency))
    for name, series in rates.items():
        ratios = [r / b for r, b in zip(series, rates["direct"], strict=True)]
        print(
            f"{name:<24}{statistics.median(series):>9.0f} req/s   {statistics.median(ratios):>5.2f}× direct "
            f"(rounds {min(ratios):.2f}–{max(ratios):.2f})"
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def memory(url: str, pid: int, total: int, concurrency: int, budget_s: float) -> None:
    """RSS of the gateway before and after ``total`` requests (or as many as fit in ``budget_s``)."""
    body = msgspec.json.encode({"model": "up", "messages": MESSAGES, "max_tokens": 16})
    headers = {"content-type": "application/json"}
    sent = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker(share: int, deadline: float) -> None:
            nonlocal sent
            for _ in range(share):
                if time.perf_counter() > deadline:
                    return
                async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                sent += 1

        await asyncio.gather(*(worker(20, math.inf) for _ in range(concurrency)))  # warm up
        before, sent = rss_kib(pid), 0
        t0 = time.perf_counter()
        deadline = t0 + budget_s
        marks = []
        step = max(1, total // 10 // concurrency)
        while sent < total and time.perf_counter() < deadline:
            await asyncio.gather(*(worker(step, deadline) for _ in range(concurrency)))
            marks.append((sent, rss_kib(pid)))
        elapsed = time.perf_counter() - t0
    after = rss_kib(pid)
    trail = ", ".join(f"{n}: {kib / 1024:.1f}" for n, kib in marks)
    cut = "" if sent >= total else f" (the {budget_s:.0f}s time budget ended the run)"
    print(f"gateway RSS {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after {sent} requests in {elapsed:.0f}s{cut}: "
          f"growth {(after - before) / 1024:+.1f} MiB")
    print(f"  RSS in MiB after n requests: {trail}")


def bare_modes(session: aiohttp.ClientSession, urls: dict[str, tuple[str, str]]) -> dict[str, Callable[[], Awaitable[None]]]:
    """A bare aiohttp client per target (name -> (chat URL, model)): the cheapest client there is."""
    headers = {"content-type": "application/json"}

    def mode(url: str, model: str) -> Callable[[], Awaitable[None]]:
        body = msgspec.json.encode({"model": model, "messages": MESSAGES, "max_tokens": 16})

        async def call() -> None:
            async with session.post(url, data=body, headers=headers) as resp:
                msgspec.json.decode(await resp.read())

        return call

    return {name: mode(url, model) for name, (url, model) in urls.items()}


async def cpu_table(
    modes: dict[str, Callable[[], Awaitable[None]]], pids: dict[str, int], upstream_pid: int, n: int, concurrency: int
) -> None:
    """CPU each server process spends per request, at ``concurrency`` (bare client): ``n``
    requests per mode in each of ROUNDS alternating rounds, the median round and the range
    (one pass per mode read the load of that moment as the mode's cost)."""
    front: dict[str, list[float]] = {name: [] for name in modes}
    upstream: dict[str, list[float]] = {name: [] for name in modes}
    per_round = max(1, n // ROUNDS)
    for _ in range(ROUNDS):
        for name, fn in modes.items():
            pid = pids.get(name)
            c0, u0 = (cpu_seconds(pid) if pid else 0.0), cpu_seconds(upstream_pid)
            await throughput(fn, per_round, concurrency)
            front[name].append((cpu_seconds(pid) - c0) / per_round * 1e6 if pid else 0.0)
            upstream[name].append((cpu_seconds(upstream_pid) - u0) / per_round * 1e6)
    for name in modes:
        gw, up = front[name], upstream[name]
        print(
            f"{name:<24} in front {statistics.median(gw):>6.0f} µs/req ({min(gw):.0f}–{max(gw):.0f})   "
            f"upstream {statistics.median(up):>6.0f} µs/req"
        )


def litellm_proxy(upstream: str, directory: Path, exe: str | None) -> tuple[subprocess.Popen[str], str] | None:
    """LiteLLM's proxy (``litellm --config``) on a free port in front of ``upstream``, once it
    answers its liveness check; None when it is not installed. Its defaults otherwise (one
    uvicorn worker, its access log on), as a user starting it gets them."""
    exe = exe or shutil.which("litellm")
    if exe is None:
        print("litellm is not installed: mode (e), LiteLLM's proxy, skipped (pip install 'litellm[proxy]', or --litellm PATH)")
        return None
    config = directory / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: up\n    litellm_params:\n"
        f"      model: openai/bench\n      api_base: {upstream}\n      api_key: x\n"
    )
    with socket.socket() as probe:  # a free port, as the servers here pick with --port 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = directory / "litellm.log"
    env = {
        **os.environ,
        # A proxy on loopback with no master key: it refuses to start without this.
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
        # Its price table from the package: no fetch from the network at start.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [exe, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health/liveliness", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    tail = log.read_text().splitlines()[-15:]
    raise SystemExit("LiteLLM's proxy did not come up:\n" + "\n".join(tail))


async def run(args: argparse.Namespace) -> None:
    import openai

    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            upstream_proc, upstream = start_server()
            procs.append(upstream_proc)
            config = gateway_config(Path(tmp), upstream)
            gateways: dict[str, str] = {}
            pids: dict[str, int] = {}
            # uvloop is an optional extra: without it the gateway runs on asyncio alone.
            loops = ("uvloop", "asyncio") if importlib.util.find_spec("uvloop") else ("asyncio",)
            for loop in loops:
                proc, url = start_child([sys.executable, "-m", "runtime", "serve", "--config", str(config), "--loop", loop])
                procs.append(proc)
                gateways[f"gateway ({loop})"], pids[f"gateway ({loop})"] = url, proc.pid
            floors: dict[str, str] = {}
            for loop in loops:
                proc, url = start_child([sys.executable, "-c", FLOOR_PROXY, upstream, loop])
                procs.append(proc)
                floors[f"aiohttp proxy ({loop})"], pids[f"aiohttp proxy ({loop})"] = url, proc.pid
            lite = litellm_proxy(upstream, Path(tmp), args.litellm)
            if lite is not None:
                procs.append(lite[0])
                pids["litellm proxy"] = lite[0].pid
            clients = {"direct": openai.AsyncOpenAI(base_url=upstream, api_key="x", max_retries=0)}
            for name, url in {**floors, **gateways}.items():
                clients[name] = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            if lite is not None:
                clients["litellm proxy"] = openai.AsyncOpenAI(base_url=lite[1] + "/v1", api_key="x", max_retries=0)

            def mode(client: openai.AsyncOpenAI, model: str) -> Callable[[], Awaitable[None]]:
                async def call() -> None:
                    await client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=16)  # type: ignore[arg-type]

                return call

            modes = {name: mode(c, "bench" if name == "direct" else "up") for name, c in clients.items()}
            targets = {"direct": (upstream + "/chat/completions", "bench")}
            targets.update({name: (url + "/v1/chat/completions", "up") for name, url in {**floors, **gateways}.items()})
            if lite is not None:
                targets["litellm proxy"] = (lite[1] + "/v1/chat/completions", "up")
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            bare = bare_modes(session, targets)
            for fn in (*modes.values(), *bare.values()):
                for _ in range(100):
                    await fn()
            uvloop = importlib.metadata.version("uvloop") if "uvloop" in loops else "not installed"
            print(f"client, gateway and upstream on {os.cpu_count()} cores; openai {openai.__version__}, uvloop {uvloop}")
            print(f"\nopenai client, concurrency 1, {args.requests} requests per mode (alternating blocks of {BLOCK})")
            await latency_table(modes, args.requests)
            print(f"\nopenai client, concurrency {args.concurrency}, throughput ({ROUNDS} alternating rounds)")
            await throughput_table(modes, args.requests * 2, args.concurrency)
            print(f"\nbare aiohttp client, concurrency 1, {args.requests} requests per mode")
            await latency_table(bare, args.requests)
            print(f"\nbare aiohttp client, concurrency {args.concurrency}, throughput ({ROUNDS} alternating rounds)")
            await throughput_table(bare, args.requests * 2, args.concurrency)
            for concurrency in (1, 16):
                print(f"\nCPU per request of each server process (bare client, concurrency {concurrency}, {ROUNDS} alternating rounds)")
                await cpu_table(bare, pids, upstream_proc.pid, args.requests * 2, concurrency)
            for c in clients.values():
                await c.close()
            await session.close()
            print(f"\nmemory over {args.memory_requests} requests (bare aiohttp client, concurrency {args.concurrency})")
            first = f"gateway ({loops[0]})"
            await memory(gateways[first], pids[first], args.memory_requests, args.concurrency, args.memory_seconds)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--memory-requests", type=int, default=100_000)
    parser.add_argument("--memory-seconds", type=float, default=240.0, help="time budget of the memory run")
    parser.add_argument("--litellm", help="LiteLLM's executable for mode (e), e.g. from another venv (default: on PATH)")
    asyncio.run(run(parser.parse_args()))
