"""The light agent client's footprint: installed size, import time, and a new client's first step.

    python bench/client_footprint.py [--python /tmp/pkg-venv/bin/python] [--runs 5] [--json]

Every figure is taken in fresh interpreters of ``--python`` (default: this one), e.g. a new
virtualenv holding only ``pip install fleet-governor`` (the base install), against the stack of
GOVERNOR_BOOTSTRAP / GOVERNOR_REDIS_URL (nothing is started here). Next to each figure is a raw
reference taken the same way:

- installed size: du of the interpreter's site-packages, without the venv's own pip and
  setuptools, and which of the worker's packages are installed (none, in the base install);
- import time of ``streams.client`` (best and median of ``--runs`` fresh processes), next to
  ``import confluent_kafka``, ``import redis`` and ``import pydantic`` alone (its own
  dependencies: most of the time is theirs);
- the first step: ``Governor(...)`` created (its policy feed caught up), then the first
  ``with gov.session() as s: s.llm_call(...)`` timed, its content plain text; then a step whose
  text could hold PII (a phone number: it waits for the PII detector if it is still loading),
  and a later step; next to a raw confluent-kafka Producer's first ``produce`` and its first
  delivery.

The script imports only the standard library itself, so it runs from a checkout with any
interpreter that has the package installed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import TypedDict

#: the worker's and the PII detector's packages: the base install has none of them
HEAVY = ("faust", "aiokafka", "presidio_analyzer", "spacy", "numpy", "scipy")
#: what a virtualenv brings of its own
VENV_TOOLS = ("pip", "setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence.pth")

IMPORT = """
import time
t = time.perf_counter()
import {module}
print(time.perf_counter() - t)
"""

SITE = """
import importlib.util, json, sysconfig
heavy = {heavy!r}
print(json.dumps({{"site": sysconfig.get_paths()["purelib"],
    "heavy": [m for m in heavy if importlib.util.find_spec(m) is not None]}}))
"""

FIRST_STEP = """
import json, logging, sys, tempfile, time, uuid
logging.disable(logging.WARNING)  # the no-trusted-keys warning of a bare stack
from streams.client import Governor
from streams.settings import Settings

settings = Settings.from_env(state_dir=__import__("pathlib").Path(tempfile.mkdtemp()))
t0 = time.perf_counter()
gov = Governor("bench-footprint", "bot-" + uuid.uuid4().hex[:6], settings=settings)
t1 = time.perf_counter()
with gov.session() as s:
    s.llm_call(model="gpt-4o-mini", input_tokens=300, output_tokens=40,
               content=[("USER", "summarise the quarterly report for the team")])
t2 = time.perf_counter()
with gov.session() as s:
    s.llm_call(model="gpt-4o-mini", input_tokens=300, output_tokens=40,
               content=[("USER", "call the customer back on 555-201-7788")])
t3 = time.perf_counter()
with gov.session() as s:
    s.llm_call(model="gpt-4o-mini", input_tokens=300, output_tokens=40,
               content=[("USER", "and again on 555-201-7789")])
t4 = time.perf_counter()
gov.emitter.flush(10.0)
stats = gov.stats()
gov.close()
heavy = {heavy!r}
print(json.dumps({{
    "init_ms": (t1 - t0) * 1000, "first_step_ms": (t2 - t1) * 1000,
    "pii_text_step_ms": (t3 - t2) * 1000, "later_step_ms": (t4 - t3) * 1000,
    "pii_unchecked": stats.get("pii_unchecked", 0), "delivered": stats["delivered"],
    "heavy_loaded": sorted({{m.split(".")[0] for m in sys.modules if m.split(".")[0] in heavy}}),
}}))
"""

#: the client's Kafka settings (GOVERNOR_KAFKA_*)
CONFIG = """
from streams.kafka_config import client_config
"""

#: the raw reference writes here, not to gov.events (a worker would dead-letter it)
RAW_TOPIC = "bench.client-footprint"

CREATE_TOPIC = """
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from streams.settings import Settings
{config}
admin = AdminClient(client_config(Settings.from_env()))
try:
    admin.create_topics([NewTopic({topic!r}, 1, 1)])[{topic!r}].result(30)
except KafkaException as exc:
    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
        raise
print("ok")
"""

RAW_PRODUCE = """
import json, time
from confluent_kafka import Producer
from streams.settings import Settings
{config}
settings = Settings.from_env()
t0 = time.perf_counter()
p = Producer(client_config(settings, {{"linger.ms": 5}}))
t1 = time.perf_counter()
p.produce({topic!r}, b"x")
t2 = time.perf_counter()
p.flush(10)
t3 = time.perf_counter()
print(json.dumps({{"producer_ms": (t1 - t0) * 1000, "produce_ms": (t2 - t1) * 1000,
    "delivered_ms": (t3 - t1) * 1000}}))
"""


class Spread(TypedDict):
    best: float
    median: float


class Footprint(TypedDict):
    python: str
    site_packages_mb: float
    heavy_installed: list[str]
    import_client_ms: Spread
    import_confluent_kafka_ms: Spread
    import_redis_ms: Spread
    import_pydantic_ms: Spread
    init_ms: Spread
    first_step_ms: Spread
    pii_text_step_ms: Spread
    later_step_ms: Spread
    pii_unchecked: int
    heavy_loaded: list[str]
    raw_producer_ms: Spread
    raw_first_produce_ms: Spread
    raw_first_delivery_ms: Spread


def _run(python: str, code: str) -> str:
    done = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, timeout=180, env=dict(os.environ)
    )
    if done.returncode != 0:
        raise SystemExit(f"{python} failed:\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def _spread(values: list[float]) -> Spread:
    return {"best": round(min(values), 1), "median": round(statistics.median(values), 1)}


def _du_mb(site: Path) -> float:
    total = 0
    for entry in site.iterdir():
        if entry.name.split("-")[0] in VENV_TOOLS or entry.name in VENV_TOOLS:
            continue
        paths = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        total += sum(p.lstat().st_size for p in paths)
    return round(total / 1e6, 1)


def measure(python: str, runs: int) -> Footprint:
    site = json.loads(_run(python, SITE.format(heavy=HEAVY)))
    imports = [float(_run(python, IMPORT.format(module="streams.client"))) for _ in range(runs)]

    def import_ms(module: str) -> Spread:
        return _spread(
            [float(_run(python, IMPORT.format(module=module))) * 1000 for _ in range(runs)]
        )

    steps = [json.loads(_run(python, FIRST_STEP.format(heavy=HEAVY))) for _ in range(runs)]
    _run(python, CREATE_TOPIC.format(topic=RAW_TOPIC, config=CONFIG))
    produce = RAW_PRODUCE.format(topic=RAW_TOPIC, config=CONFIG)
    raws = [json.loads(_run(python, produce)) for _ in range(runs)]
    return {
        "python": python,
        "site_packages_mb": _du_mb(Path(site["site"])),
        "heavy_installed": site["heavy"],
        "import_client_ms": _spread([t * 1000 for t in imports]),
        "import_confluent_kafka_ms": import_ms("confluent_kafka"),
        "import_redis_ms": import_ms("redis"),
        "import_pydantic_ms": import_ms("pydantic"),
        "init_ms": _spread([s["init_ms"] for s in steps]),
        "first_step_ms": _spread([s["first_step_ms"] for s in steps]),
        "pii_text_step_ms": _spread([s["pii_text_step_ms"] for s in steps]),
        "later_step_ms": _spread([s["later_step_ms"] for s in steps]),
        "pii_unchecked": max(s["pii_unchecked"] for s in steps),
        "heavy_loaded": sorted({m for s in steps for m in s["heavy_loaded"]}),
        "raw_producer_ms": _spread([r["producer_ms"] for r in raws]),
        "raw_first_produce_ms": _spread([r["produce_ms"] for r in raws]),
        "raw_first_delivery_ms": _spread([r["delivered_ms"] for r in raws]),
    }


def report(f: Footprint) -> str:
    def ms(s: Spread) -> str:
        return f"{s['best']:8.1f} ms best  {s['median']:8.1f} ms median"

    lines = [
        f"python                          {f['python']}",
        f"site-packages (no pip/setuptools) {f['site_packages_mb']:.1f} MB;"
        f" worker/PII packages installed: {', '.join(f['heavy_installed']) or 'none'}",
        f"import streams.client           {ms(f['import_client_ms'])}",
        f"  raw: import confluent_kafka   {ms(f['import_confluent_kafka_ms'])}",
        f"  raw: import redis             {ms(f['import_redis_ms'])}",
        f"  raw: import pydantic          {ms(f['import_pydantic_ms'])}",
        f"Governor(...) created           {ms(f['init_ms'])}",
        f"first step (plain text)         {ms(f['first_step_ms'])}   goal <= 50 ms",
        f"  step with a phone number      {ms(f['pii_text_step_ms'])}",
        f"  a later step                  {ms(f['later_step_ms'])}",
        f"  raw: Producer() created       {ms(f['raw_producer_ms'])}",
        f"  raw: first produce()          {ms(f['raw_first_produce_ms'])}",
        f"  raw: first delivery           {ms(f['raw_first_delivery_ms'])}",
        f"texts left unchecked for PII    {f['pii_unchecked']} (presidio not installed)"
        if f["pii_unchecked"]
        else "texts left unchecked for PII    0",
        f"worker/PII modules loaded       {', '.join(f['heavy_loaded']) or 'none'}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per figure")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    footprint = measure(args.python, args.runs)
    print(json.dumps(footprint, indent=2) if args.json else report(footprint))


if __name__ == "__main__":
    main()
