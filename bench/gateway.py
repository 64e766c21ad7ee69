"""What ``governor gateway`` adds to a call: latency p50/p99 and requests/s, next to the same
fake provider called directly, non-streamed and streamed (time to first byte).

    python -m bench.gateway [--requests 400] [--concurrency 16] [--session-calls 10]

Uses the stack of GOVERNOR_BOOTSTRAP / GOVERNOR_REDIS_URL (starting the local one if it is not
running), on fresh topics. Starts the fake provider (tests/integration/gateway/fake_upstream.py)
and a real ``governor gateway`` as processes of their own, with the signed policy set published
as the worker does (a session budget, a tool policy, the repository's prices and PII rules: the
client checks run on every call, PII scanning included). Then, for each of direct and gateway:

1. **Latency**: ``--requests`` chat completions one at a time (non-streamed, then streamed:
   time to the first SSE event and to the end), p50/p99.
2. **Throughput**: ``--requests`` x 2 non-streamed calls over ``--concurrency`` connections,
   requests/s (the gateway is one process: one core at most).

Calls through the gateway belong to sessions of ``--session-calls`` calls
(``X-Governor-Session``), the shape of an agent's conversation; each records its LLM_CALL on the
events topic.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.common import bench_stack, percentile
from streams.control import generate_signing_key
from streams.gateway.config import key_hash
from streams.policy_files import load_bundle
from streams.policy_history import PolicyHistory
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[1]
#: the ports of the gateway work (35400-35499)
PROVIDER_PORT = 35420
GATEWAY_PORT = 35421
KEY = "gw-bench-key"
FAKE_PROVIDER = "tests.integration.gateway.fake_upstream"
POLICIES = """version: 1
policies:
  - id: session-budget
    kind: budget
    scope: session
    limit_usd: 1000.0
    action: kill
  - id: no-drops
    kind: tools
    deny: ["drop_*"]
    action: kill
"""
BODY = {
    "model": "gpt-4o",
    "max_tokens": 200,
    "messages": [
        {"role": "system", "content": "You are a support agent. Answer in one sentence."},
        {"role": "user", "content": "Where is order 4471? It was due on Monday."},
    ],
}


def gateway_yaml() -> str:
    return f"""version: 1
upstreams:
  fake:
    api: openai
    base_url: "http://127.0.0.1:{PROVIDER_PORT}/v1"
    key_env: GW_BENCH_PROVIDER_KEY
routes:
  - models: ["gpt-*"]
    upstream: fake
keys:
  - sha256: "{key_hash(KEY)}"
    tenant: bench
    agent: bench-agent
"""


def prepare(settings: Settings, root: Path) -> Settings:
    folder = root / "policies"
    folder.mkdir()
    for name in ("prices.yaml", "pii.yaml"):
        shutil.copy(REPO / "policies" / name, folder / name)
    (folder / "governor.yaml").write_text(POLICIES)
    (folder / "gateway.yaml").write_text(gateway_yaml())
    settings = settings.replace(policies_dir=folder, state_dir=root / "state")
    key = generate_signing_key(settings.control_keys_dir, "bench1")
    history = PolicyHistory(settings, folder, key)
    try:
        history.accepted(load_bundle(folder).policies).result(timeout=30)
    finally:
        history.close()
    return settings


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process on port {port} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {timeout_s}s")


@dataclass
class Timing:
    total_s: list[float]
    first_byte_s: list[float]


async def one(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], stream: bool
) -> tuple[float, float]:
    body = {**BODY, "stream": True} if stream else BODY
    started = time.perf_counter()
    async with http.post(url, json=body, headers=headers) as response:
        if response.status != 200:
            raise SystemExit(f"{url}: HTTP {response.status}: {await response.text()}")
        first = None
        async for _chunk in response.content.iter_any():
            if first is None:
                first = time.perf_counter() - started
        return time.perf_counter() - started, first or 0.0


def headers_for(via_gateway: bool, index: int, session_calls: int, tag: str) -> dict[str, str]:
    if not via_gateway:
        return {"Authorization": "Bearer sk-fake-openai"}
    return {
        "Authorization": f"Bearer {KEY}",
        "X-Governor-Session": f"bench-{tag}-{index // session_calls}",
    }


async def latency(
    url: str, via_gateway: bool, requests: int, stream: bool, session_calls: int
) -> Timing:
    tag = uuid.uuid4().hex[:6]
    timing = Timing([], [])
    async with aiohttp.ClientSession() as http:
        for i in range(requests):
            total, first = await one(
                http, url, headers_for(via_gateway, i, session_calls, tag), stream
            )
            timing.total_s.append(total)
            timing.first_byte_s.append(first)
    return timing


async def throughput(
    url: str, via_gateway: bool, requests: int, concurrency: int, session_calls: int
) -> float:
    tag = uuid.uuid4().hex[:6]
    counter = iter(range(requests))

    async def worker(http: aiohttp.ClientSession, w: int) -> None:
        # each connection is an agent: its sessions' calls one after another (a gateway
        # serves the calls of one session in order)
        for n, _ in enumerate(counter):
            await one(http, url, headers_for(via_gateway, n, session_calls, f"{tag}-{w}"), False)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        await one(http, url, headers_for(via_gateway, 0, session_calls, "warm"), False)
        started = time.perf_counter()
        await asyncio.gather(*(worker(http, w) for w in range(concurrency)))
        return requests / (time.perf_counter() - started)


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:8.2f}"


def run(args: argparse.Namespace, settings: Settings) -> None:
    direct = f"http://127.0.0.1:{PROVIDER_PORT}/v1/chat/completions"
    gateway = f"http://127.0.0.1:{GATEWAY_PORT}/v1/chat/completions"
    n, calls = args.requests, args.session_calls
    # warm both (presidio loads on the gateway's first scan)
    asyncio.run(latency(direct, False, 20, False, calls))
    asyncio.run(latency(gateway, True, 20, False, calls))
    rows = []
    for label, url, via in (("direct", direct, False), ("gateway", gateway, True)):
        unary = asyncio.run(latency(url, via, n, False, calls))
        streamed = asyncio.run(latency(url, via, n, True, calls))
        rate = asyncio.run(throughput(url, via, n * 2, args.concurrency, calls))
        rows.append((label, unary, streamed, rate))
    print(f"\n{n} calls one at a time, then {n * 2} over {args.concurrency} connections")
    print(
        f"{'path':8} {'p50 ms':>8} {'p99 ms':>8} | {'ttfb p50':>8} {'ttfb p99':>8} "
        f"{'end p50':>8} {'end p99':>8} | {'req/s':>8}"
    )
    for label, unary, streamed, rate in rows:
        print(
            f"{label:8} {ms(unary.total_s, 0.5)} {ms(unary.total_s, 0.99)} | "
            f"{ms(streamed.first_byte_s, 0.5)} {ms(streamed.first_byte_s, 0.99)} "
            f"{ms(streamed.total_s, 0.5)} {ms(streamed.total_s, 0.99)} | {rate:8.0f}"
        )
    (_, du, ds, drate), (_, gu, gs, grate) = rows

    def added(g: list[float], d: list[float], q: float) -> str:
        return f"{(percentile(g, q) - percentile(d, q)) * 1000:8.2f}"

    print(
        f"{'added':8} {added(gu.total_s, du.total_s, 0.5)} {added(gu.total_s, du.total_s, 0.99)} | "
        f"{added(gs.first_byte_s, ds.first_byte_s, 0.5)} "
        f"{added(gs.first_byte_s, ds.first_byte_s, 0.99)} "
        f"{added(gs.total_s, ds.total_s, 0.5)} {added(gs.total_s, ds.total_s, 0.99)} | "
        f"{grate / drate:7.0%} of direct"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--session-calls", type=int, default=10)
    args = parser.parse_args()
    with bench_stack() as base, tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        settings = prepare(base, Path(tmp))
        env = {**os.environ, **settings.to_env(), "GW_BENCH_PROVIDER_KEY": "sk-fake-openai"}
        provider = subprocess.Popen(
            [sys.executable, "-m", FAKE_PROVIDER, "--port", str(PROVIDER_PORT)],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        gateway = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "gateway", "--port", str(GATEWAY_PORT)],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_listening(PROVIDER_PORT, provider)
            wait_listening(GATEWAY_PORT, gateway)
            run(args, settings)
        finally:
            for proc in (gateway, provider):
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
