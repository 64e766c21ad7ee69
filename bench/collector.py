"""OTLP spans/s through an OpenTelemetry Collector into ``governor ingest``, next to direct.

    python -m bench.collector [--spans 50000] [--batch 512] [--connections 4]

Builds the Collector of ``ops/otel-collector/builder.yaml`` first when it is not built yet
(``ops/otel-collector/build.sh``: minutes the first time, printed), then, on fresh topics of
the stack of GOVERNOR_BOOTSTRAP / GOVERNOR_REDIS_URL:

1. **Through the Collector**: a real ``governor ingest`` process and the Collector running
   ``ops/otel-collector/governor.yaml`` as shipped (groupbytrace, the resource processor,
   batch, otlphttp with gzip; only its ports, its own telemetry and the groupbytrace wait,
   ``--wait``, changed). The bench posts protobuf requests of ``--batch`` spans (the sessions of
   ``bench.ingest``: 10 spans, 11 events each) to the Collector and times until the events
   topic holds every session's events (the Collector answers before it forwards).
2. **Direct**: the same number of spans posted to ``governor ingest`` itself, timed the same
   way (``bench.ingest`` times the answers instead).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import bench_stack
from bench.ingest import (
    EVENTS_PER_SESSION,
    SPANS_PER_SESSION,
    build_requests,
    post_all,
    start_ingest,
    topic_records,
    wait_port,
)
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "ops" / "otel-collector" / "governor.yaml"


def build_collector() -> Path:
    started = time.perf_counter()
    out = subprocess.run(
        [str(REPO / "ops" / "otel-collector" / "build.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    binary = Path(out.stdout.strip().splitlines()[-1])
    print(f"Collector {binary} ready in {time.perf_counter() - started:.1f}s", flush=True)
    return binary


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def collector_config(listen: int, wait_s: float, folder: Path) -> Path:
    config = yaml.safe_load(CONFIG.read_text())
    config["receivers"]["otlp"]["protocols"] = {"http": {"endpoint": f"127.0.0.1:{listen}"}}
    config["processors"]["groupbytrace"]["wait_duration"] = f"{wait_s}s"
    config["service"]["telemetry"] = {"metrics": {"level": "none"}}
    path = folder / "collector.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait_listening(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the Collector did not start")
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.1)


def until_topic_holds(settings: Settings, records: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while topic_records(settings) < records:
        if time.monotonic() > deadline:
            held = topic_records(settings)
            raise SystemExit(
                f"events topic holds {held:,} records after {timeout_s}s, not {records:,}"
            )
        time.sleep(0.2)


def run(spans_wanted: int, batch: int, connections: int, wait_s: float) -> None:
    binary = build_collector()
    sessions = max(1, spans_wanted // SPANS_PER_SESSION)
    spans = sessions * SPANS_PER_SESSION
    per_run = sessions * EVENTS_PER_SESSION
    with bench_stack() as settings, tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        ingest = start_ingest(settings, folder / "port")
        collector: subprocess.Popen[bytes] | None = None
        try:
            port = wait_port(ingest, folder / "port")
            listen = free_port()
            collector = subprocess.Popen(
                [str(binary), "--config", str(collector_config(listen, wait_s, folder))],
                env={**os.environ, "GOVERNOR_INGEST_URL": f"http://127.0.0.1:{port}"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_listening(collector, listen)
            bodies = build_requests(sessions, batch, compress=False)
            started = time.perf_counter()
            answered = post_all(listen, bodies, connections, compress=False)
            until_topic_holds(settings, per_run)
            through = time.perf_counter() - started
            bodies = build_requests(sessions, batch, compress=False)
            started = time.perf_counter()
            post_all(port, bodies, connections, compress=False)
            until_topic_holds(settings, 2 * per_run)
            direct = time.perf_counter() - started
        finally:
            for proc in (collector, ingest):
                if proc is not None:
                    proc.terminate()
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
        held = topic_records(settings)
        if held != 2 * per_run:
            raise SystemExit(f"events topic holds {held:,} records, expected {2 * per_run:,}")
    print(
        f"through the Collector: {spans:,} spans in {through:.2f}s = {spans / through:,.0f} "
        f"spans/s into {settings.topic('events')} (the Collector answered all in "
        f"{answered:.2f}s; groupbytrace wait {wait_s}s included)"
    )
    print(
        f"direct to governor ingest: {spans:,} spans in {direct:.2f}s = "
        f"{spans / direct:,.0f} spans/s"
    )
    print(
        f"each run: {len(bodies)} requests of ~{batch} spans, {connections} connections; topic "
        f"holds exactly {2 * per_run:,} records ({EVENTS_PER_SESSION} per session)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=512, help="spans per OTLP request")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--wait", type=float, default=1.0, help="groupbytrace wait_duration, s")
    args = parser.parse_args()
    run(args.spans, args.batch, args.connections, args.wait)


if __name__ == "__main__":
    main()
