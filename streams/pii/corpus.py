"""A labelled corpus for PII detection: synthetic values in realistic sentences, and tricky
negatives that look numeric or structured but are not PII (order numbers, dates, version
strings, UUIDs, amounts). About one text in ten holds PII, as in a real fleet."""

from __future__ import annotations

import random
import uuid

from streams.simulator.pii import PiiFactory

LABELLED_ENTITIES = ("CREDIT_CARD", "EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN")
TEMPLATES = (
    "Please update the account, my contact is {v}.",
    "Customer wrote: reach me at {v} after 5pm",
    "lookup_user(query='{v}')",
    '{{"customer": {{"id": 4411, "value": "{v}"}}}}',
    "Refund issued; reference {v} noted by the agent.",
)
NEGATIVES = (
    "Order #{n} shipped on 2025-{m:02d}-{d:02d} via carrier 7",
    "Upgraded the SDK from v{a}.{b}.{c} to v{a}.{b}.{c2}",
    "Trace id {u} completed in 123 ms",
    "Invoice total: $1,{n3}.{c2}{c} for 3 items",
    "Ticket {n} was merged into {n2} on 2024/{m}/{d}",
    "Build 2025.{m}.{d}-rc{c} passed 412 of 415 tests",
)


def corpus(
    seed: int = 42, texts: int = 1500, pii_share: float = 0.1
) -> list[tuple[str, list[tuple[str, str]]]]:
    rng = random.Random(seed)
    factory = PiiFactory(rng)
    items: list[tuple[str, list[tuple[str, str]]]] = []
    for _ in range(texts):
        if rng.random() < pii_share:
            entity = rng.choice(LABELLED_ENTITIES)
            value = factory.make(entity)
            items.append((rng.choice(TEMPLATES).format(v=value.value), [(entity, value.value)]))
        else:
            text = rng.choice(NEGATIVES).format(
                n=rng.randint(10_000, 99_999_999),
                n2=rng.randint(1000, 9999),
                n3=rng.randint(100, 999),
                m=rng.randint(1, 12),
                d=rng.randint(1, 28),
                a=rng.randint(0, 9),
                b=rng.randint(0, 30),
                c=rng.randint(0, 9),
                c2=rng.randint(10, 99),
                u=uuid.UUID(int=rng.getrandbits(128)),
            )
            items.append((text, []))
    return items


# --- a realistic mix: what agents send, with numbers, dates, ids and code, and no PII ---------

#: where each kind of text sits in an event (the role of its content segment)
ROLES = ("SYSTEM", "USER", "ASSISTANT", "TOOL_ARGUMENTS", "TOOL_RESULT")
SYSTEM_PROMPTS = (
    "You are a support assistant for Acme Cloud. Answer in at most 120 words. Never refund "
    "more than $500.00 without approval; escalate tickets older than 72 hours. Use the tools "
    "get_order, list_invoices and create_ticket. Today is {date}. Policy version 2.4.1.",
    "You are an on-call SRE assistant. Prefer read-only diagnostics (kubectl get, logs, "
    "metrics) before any change. The SLO is 99.9 % over 30 days; page if the error budget "
    "burn rate exceeds 14.4 over 1 h. Cluster prod-eu-west-1, release {version}.",
    "You write and review Python code. Follow PEP 8, type every function, keep functions "
    "under 40 lines, and explain changes in a short list. Python 3.11, pytest 8.2.",
    "You are a billing analyst. Amounts are in USD with two decimals; quarters run Jan-Mar, "
    "Apr-Jun, Jul-Sep, Oct-Dec. Round percentages to one decimal. Fiscal year {year}.",
)
USER_PROMPTS = (
    "Where is order #{order}? It was due on {date} and the tracking page still says 'label "
    "created'.",
    "Why did invoice INV-{year}-{n5} go up from ${amount} to ${amount2}?",
    "The dashboard shows p99 latency of {ms} ms since {time} UTC, can you check pod {pod}?",
    "Please compare Q{q} {year} revenue with Q{q} {year_before}: {pct} % growth expected.",
    "Our build {build} fails on step 4 of 7 with exit code {code}; it passed on commit {sha7}.",
    "Refactor this so it handles {n3} items per batch:\n\n```python\nfor i in range({n4}):\n"
    "    total += prices[i] * 1.0{d}\n```",
    "Summarise ticket {ticket} and the {n2} comments under it.",
    "Rotate the staging API key without downtime; the current one expires on {date}.",
)
OUTPUTS = (
    "Order #{order} left our warehouse on {date} and is with the carrier (tracking "
    "1Z{track}). The new estimate is {date2}, between 09:00 and 17:00.",
    "Invoice INV-{year}-{n5} is ${amount2} because {n2} seats were added on {date} (prorated "
    "{n2} x ${amount} for {d} days). I have opened ticket {ticket} to review it.",
    "p99 latency rose from {ms2} ms to {ms} ms at {time} UTC when pod {pod} restarted {d} "
    "times (OOMKilled, limit 512Mi). Raising the limit to 1Gi should fix it.",
    "Here is the fix:\n\n```python\ndef chunks(items: list[int], size: int = {n3}) -> "
    "Iterator[list[int]]:\n    for start in range(0, len(items), size):\n        yield "
    "items[start : start + size]\n```\nIt runs in O(n); {n4} items take about {ms} ms.",
    "Revenue in Q{q} {year} was ${big} against ${big2} in Q{q} {year_before} ({pct} %). "
    "The largest change is in EMEA (+{pct2} %).",
    "Build {build} failed in `test_parse_dates` (line {n3}): expected '{date}', got "
    "'{date2}'. Commit {sha7} changed the time zone handling; reverting it passes {n3}/{n3} "
    "tests.",
)
TOOL_ARGUMENTS = (
    '{{"order_id": "ORD-{year}-{n6}", "include": ["items", "shipments"]}}',
    '{{"query": "SELECT id, total FROM invoices WHERE created_at >= \'{date}\' AND total > '
    '{n3} ORDER BY total DESC LIMIT {n2}"}}',
    '{{"namespace": "prod", "pod": "{pod}", "since": "{date}T{time}:00Z", "tail": {n3}}}',
    '{{"metric": "http_request_duration_seconds", "quantile": 0.99, "step": "60s", "start": '
    '{epoch}, "end": {epoch2}}}',
    '{{"ticket": "{ticket}", "priority": "P{d}", "labels": ["billing", "q{q}-{year}"]}}',
    '{{"repo": "acme/api", "ref": "{sha40}", "workflow": "ci.yml", "run": {n6}}}',
)
TOOL_RESULTS = (
    '{{"id": "{uuid}", "status": "shipped", "created_at": "{date}T{time}:12Z", "items": [{{'
    '"sku": "SKU-{n5}", "qty": {d}, "price": {amount}}}], "total": {amount2}, "carrier": '
    '"UPS", "tracking": "1Z{track}"}}',
    '{{"rows": [[{n6}, {amount}], [{n6b}, {amount2}]], "row_count": 2, "elapsed_ms": {ms}}}',
    "{date}T{time}:03.{n3}Z INFO  request_id={uuid} method=GET path=/v1/orders/{n6} "
    "status=200 duration_ms={ms} bytes={n5}",
    '{{"values": [[{epoch}, "{ms}.{n2}"], [{epoch2}, "{ms2}.{n2}"]], "resultType": "matrix"}}',
    'Traceback (most recent call last):\n  File "/app/api/orders.py", line {n3}, in get\n    '
    "return self.cache[key]\nKeyError: 'order:{n6}'",
    '{{"pods": [{{"name": "{pod}", "restarts": {d}, "cpu": "{n3}m", "memory": "{n3}Mi", '
    '"ip": "10.{d}.{n2}.{d2}", "node": "ip-10-0-{d}-{n2}.eu-west-1.compute.internal"}}]}}',
    '{{"commit": "{sha40}", "version": "{version}", "checks": {{"passed": {n3}, "failed": 0}}}}',
)
_TEXTS_BY_ROLE = {
    "SYSTEM": SYSTEM_PROMPTS,
    "USER": USER_PROMPTS,
    "ASSISTANT": OUTPUTS,
    "TOOL_ARGUMENTS": TOOL_ARGUMENTS,
    "TOOL_RESULT": TOOL_RESULTS,
}
#: how a PII value is put into a text of each role
_PII_BY_ROLE = {
    "SYSTEM": "The account owner can be reached at {v}.",
    "USER": "You can reach me at {v} if needed.",
    "ASSISTANT": "I have noted {v} on the ticket.",
    "TOOL_ARGUMENTS": '{{"customer_ref": "{v}"}}',
    "TOOL_RESULT": '{{"contact": "{v}", "verified": true}}',
}


def _fields(rng: random.Random) -> dict[str, object]:
    """Random values for the templates: numbers, dates, ids, hashes (never PII)."""

    def digits(n: int) -> str:
        return "".join(rng.choice("0123456789") for _ in range(n))

    year = rng.randint(2023, 2026)
    epoch = rng.randint(1_700_000_000, 1_790_000_000)
    return {
        "date": f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "date2": f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "time": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
        "year": year,
        "year_before": year - 1,
        "order": rng.randint(10_000, 9_999_999),
        "amount": f"{rng.randint(5, 999)}.{rng.randint(0, 99):02d}",
        "amount2": f"{rng.randint(1000, 9999)}.{rng.randint(0, 99):02d}",
        "big": f"{rng.randint(1, 99)},{rng.randint(100, 999)},{rng.randint(100, 999)}",
        "big2": f"{rng.randint(1, 99)},{rng.randint(100, 999)},{rng.randint(100, 999)}",
        "pct": f"{rng.randint(0, 40)}.{rng.randint(0, 9)}",
        "pct2": f"{rng.randint(0, 20)}.{rng.randint(0, 9)}",
        "ms": rng.randint(12, 4000),
        "ms2": rng.randint(12, 400),
        "q": rng.randint(1, 4),
        "d": rng.randint(1, 9),
        "d2": rng.randint(2, 254),
        "n2": rng.randint(10, 99),
        "n3": rng.randint(100, 999),
        "n4": rng.randint(1000, 9999),
        "n5": rng.randint(10_000, 99_999),
        "n6": rng.randint(100_000, 999_999),
        "n6b": rng.randint(100_000, 999_999),
        "code": rng.choice((1, 2, 127, 137, 255)),
        "ticket": f"SUP-{rng.randint(1000, 99_999)}",
        "pod": f"api-{rng.getrandbits(36):09x}-{''.join(rng.choices('bcdfghjklmnpqrstvwxz', k=5))}",
        "build": f"{year}.{rng.randint(1, 12)}.{rng.randint(1, 28)}-rc{rng.randint(1, 9)}",
        "version": f"v{rng.randint(0, 9)}.{rng.randint(0, 40)}.{rng.randint(0, 20)}",
        "sha7": f"{rng.getrandbits(28):07x}",
        "sha40": f"{rng.getrandbits(160):040x}",
        "uuid": uuid.UUID(int=rng.getrandbits(128)),
        "track": f"{rng.getrandbits(40):010X}{digits(6)}",
        "epoch": epoch,
        "epoch2": epoch + 3600,
    }


def clean_corpus(seed: int = 11, texts: int = 1500) -> list[tuple[str, str]]:
    """(role, text) of agents' prompts, outputs, tool arguments and results with numbers, dates,
    ids and code, and no PII: what a fleet sends most of the time (for precision)."""
    rng = random.Random(seed)
    items: list[tuple[str, str]] = []
    for _ in range(texts):
        role = rng.choice(ROLES)
        items.append((role, rng.choice(_TEXTS_BY_ROLE[role]).format(**_fields(rng))))
    return items


def realistic_mix(
    seed: int = 5, segments: int = 3000, pii_share: float = 0.07
) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(role, text, labels) in the order a fleet sends them: every LLM call its prompt (the
    system prompt on a session's first call) and its output, every tool call its arguments and
    result; ``pii_share`` of the texts hold one labelled PII value."""
    rng = random.Random(seed)
    factory = PiiFactory(rng)
    items: list[tuple[str, str, list[tuple[str, str]]]] = []
    system = rng.choice(SYSTEM_PROMPTS).format(**_fields(rng))
    while len(items) < segments:
        if rng.random() < 0.1:  # a new session
            system = rng.choice(SYSTEM_PROMPTS).format(**_fields(rng))
            roles: tuple[str, ...] = ("SYSTEM", "USER", "ASSISTANT")
        elif rng.random() < 0.5:
            roles = ("TOOL_ARGUMENTS", "TOOL_RESULT")
        else:
            roles = ("USER", "ASSISTANT")
        for role in roles:
            text = system if role == "SYSTEM" else rng.choice(_TEXTS_BY_ROLE[role])
            text = text.format(**_fields(rng)) if role != "SYSTEM" else text
            labels: list[tuple[str, str]] = []
            if rng.random() < pii_share:
                entity = rng.choice(LABELLED_ENTITIES)
                value = factory.make(entity).value
                text = f"{text} {_PII_BY_ROLE[role].format(v=value)}"
                labels = [(entity, value)]
            items.append((role, text, labels))
    return items[:segments]
