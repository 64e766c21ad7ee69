"""Sessions open now: what the accounting workers hold as ACTIVE (``/state/sessions``),
counted once each over the group (pure; the fetching is in :mod:`streams.console.source`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from streams.pipeline.accounting import ACTIVE


class SessionsNow(TypedDict):
    """The overview's "sessions open now" and its JSON twin ``/api/sessions-now``
    (``answered`` False, and the counts 0, when no worker answers)."""

    answered: bool
    #: how many workers answered
    workers: int
    #: sessions open now (ACTIVE in a worker's state), each counted once
    open: int
    #: the open sessions per tenant, most first (ties by name)
    by_tenant: dict[str, int]
    #: why a worker that listens gave no count (it refused the console's token), else None
    error: str | None


def sessions_now(answers: Iterable[Mapping[str, Any]], error: str | None = None) -> SessionsNow:
    """Count the open sessions in the workers' ``/state/sessions`` answers. A session two
    workers hold (a rebalance under way, or the local worker also listed in its group) counts
    once; a malformed row is skipped, not guessed."""
    workers = 0
    tenant_of: dict[str, str] = {}
    for answer in answers:
        rows = answer.get("sessions")
        if not isinstance(rows, list):
            continue
        workers += 1
        for row in rows:
            if not isinstance(row, Mapping) or row.get("status") != ACTIVE:
                continue
            session = row.get("session_id")
            if isinstance(session, str):
                tenant = row.get("tenant_id")
                tenant_of[session] = tenant if isinstance(tenant, str) else "(none)"
    counts: dict[str, int] = {}
    for tenant in tenant_of.values():
        counts[tenant] = counts.get(tenant, 0) + 1
    by_tenant = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return {
        "answered": workers > 0,
        "workers": workers,
        "open": len(tenant_of),
        "by_tenant": by_tenant,
        "error": error,
    }
