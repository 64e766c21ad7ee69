"""``governor audit``: verify and anchor the tamper-evident trail."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from streams.cli import render
from streams.cli.base import (
    GovernorTyper,
    Wide,
    app,
    console,
    fail,
    settings,
    show,
)

# --- audit -------------------------------------------------------------------------------

audit_app = GovernorTyper(
    help="The tamper-evident audit trail: hash-chained per tenant, heads and every N-th "
    "record signed with the worker's Ed25519 key."
)
app.add_typer(audit_app, name="audit")


def _read_anchors(spec: str) -> list[Any]:
    """``--anchor``: a file written by ``governor audit anchor --json``, or that JSON itself."""
    from streams.audit import AnchorError, parse_anchors

    path = Path(spec)
    text = spec if spec.lstrip().startswith(("{", "[")) else None
    if text is None:
        if not path.is_file():
            raise fail(f"--anchor {spec}: no such file; give the file or the JSON itself")
        text = path.read_text()
    try:
        return parse_anchors(text)
    except AnchorError as exc:
        raise fail(f"--anchor {spec}: {exc}") from exc


@audit_app.command("verify")
def audit_verify(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable result.")] = False,
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            "--anchor",
            help="An anchor kept outside Kafka (a file or the JSON of `governor audit anchor "
            "--json`); the trail must still hold its record with the same hash. Repeatable.",
        ),
    ] = None,
) -> None:
    """Re-hash every chain of gov.audit, check its signatures and compare with the signed heads.

    Names the tenant, chain_seq and offset of every edited, removed, reordered or truncated
    record, of every head or record whose signature is missing or does not verify with the
    trusted public keys (the keys folder, or GOVERNOR_CONTROL_PUBLIC_KEYS), of every anchor the
    trail no longer holds, and the partition, offset and reason of any record that is not an
    AuditRecord; exits 1 when the trail is broken.
    """
    import json as json_lib

    from streams.audit import NoTrustedKeys, verify_audit_topic

    s = settings()
    anchors = [a for spec in anchor or [] for a in _read_anchors(spec)]
    try:
        result = verify_audit_topic(s, anchors=anchors)
    except NoTrustedKeys as exc:
        raise fail(str(exc)) from exc
    if as_json:
        console.print_json(json_lib.dumps(result.as_dict()))
    else:
        show(render.audit_verify(result.as_dict()))
    if result.breaks:
        raise typer.Exit(code=1)


@audit_app.command("anchor")
def audit_anchor(
    tenant: Annotated[
        str | None, typer.Option(help="Only this tenant's chain (default: every chain).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The anchor(s) as JSON, to keep outside Kafka.")
    ] = False,
    wide: Wide = False,
) -> None:
    """Print a signed anchor of each chain: tenant, chain_seq, head hash, time, key id and the
    worker's signature (its head in gov.audit.heads, checked against the trail first).

    Keep the JSON outside Kafka (a ticket, a WORM bucket, a notary); later
    `governor audit verify --anchor FILE` proves the trail still holds that record unchanged,
    even if the chain and its heads were rewritten together since. Refuses a broken chain.
    """
    import json as json_lib
    from dataclasses import asdict

    from streams.audit import AnchorError, NoTrustedKeys, current_anchors

    s = settings()
    try:
        anchors = current_anchors(s, tenant)
    except (AnchorError, NoTrustedKeys) as exc:
        raise fail(str(exc)) from exc
    if as_json:
        rows = [asdict(a) for a in anchors]
        console.print_json(json_lib.dumps(rows[0] if tenant else rows))
        return
    show(render.audit_anchors([asdict(a) for a in anchors], wide=wide), wide)
