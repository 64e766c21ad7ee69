"""Incident records: what happened, when, to whom, what was done and what is left to clean up.

The logic is pure: :func:`open_incident`, :func:`add_entry` and :func:`close_incident` take an
:class:`Incident` and return a new one (errors are ``ValueError`` with a message fit for the
command line). The I/O is thin: :func:`publish_incident` writes the whole record to the
compacted ``gov.incidents`` (key = incident_id), so the topic always holds the latest state of
every incident; :func:`load_incidents` reads it back.

Every change republishes the whole record: an incident is small (a few dozen entries), and a
reader then needs no history to know its state.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from streams.codec import Codecs
from streams.settings import Settings
from streams.topics import publish_keyed, read_latest

LAYERS = ("MODEL", "PROMPT", "TOOL", "POLICY", "INFRA", "UNKNOWN")
#: entries anyone may write; STATUS entries are written only by opening and closing, so the
#: status history in the log can be trusted
NOTE_KINDS = ("NOTE", "ACTION", "DOWNSTREAM")
OPEN, CLOSED = "OPEN", "CLOSED"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class IncidentEntry:
    time_us: int
    author: str
    kind: str  #: NOTE, ACTION, DOWNSTREAM or STATUS
    text: str
    sessions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Incident:
    incident_id: str
    title: str
    status: str
    opened_at_us: int
    opened_by: str
    from_us: int
    updated_at_us: int
    severity: str | None = None
    closed_at_us: int | None = None
    closed_by: str | None = None
    resolution: str | None = None
    to_us: int | None = None
    suspected_layer: str = "UNKNOWN"
    tenants: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    affected_sessions: tuple[str, ...] = ()
    entries: tuple[IncidentEntry, ...] = ()


# --- ids -----------------------------------------------------------------------------------


def incident_id_for(opened_at_us: int, suffix: str) -> str:
    """``INC-<yyyymmdd>-<suffix>``, the date in UTC: sortable by day, short enough to say."""
    day = datetime.fromtimestamp(opened_at_us / 1_000_000, UTC).strftime("%Y%m%d")
    return f"INC-{day}-{suffix}"


def choose_incident_id(
    opened_at_us: int,
    taken: Collection[str],
    random_hex: Callable[[], str] = lambda: secrets.token_hex(2),
) -> str:
    """A fresh id: four random hex digits give 65,536 a day; a clash with a known id re-rolls."""
    for _ in range(100):
        candidate = incident_id_for(opened_at_us, random_hex())
        if candidate not in taken:
            return candidate
    raise ValueError("no free incident id after 100 tries: give one with --id")


def check_incident_id(incident_id: str, taken: Collection[str]) -> str:
    """A given id must be a plain token (it is a Kafka key and a CLI argument) and new."""
    if not _ID.match(incident_id):
        raise ValueError(
            f"incident id {incident_id!r}: use letters, digits, '.', '_' or '-' (up to 64)"
        )
    if incident_id in taken:
        raise ValueError(f"incident {incident_id} already exists")
    return incident_id


# --- the pure record operations --------------------------------------------------------------


def open_incident(
    *,
    incident_id: str,
    title: str,
    opened_at_us: int,
    opened_by: str,
    from_us: int | None = None,
    to_us: int | None = None,
    severity: str | None = None,
    suspected_layer: str = "UNKNOWN",
    tenants: Iterable[str] = (),
    agents: Iterable[str] = (),
    sessions: Iterable[str] = (),
) -> Incident:
    """A new OPEN incident; its range starts at ``from_us`` (default: when it was opened)."""
    title = title.strip()
    if not title:
        raise ValueError("an incident needs a title")
    start = opened_at_us if from_us is None else from_us
    _check_range(start, to_us)
    layer = parse_layer(suspected_layer)
    affected = _unique(sessions)
    return Incident(
        incident_id=incident_id,
        title=title,
        status=OPEN,
        opened_at_us=opened_at_us,
        opened_by=_author(opened_by),
        from_us=start,
        to_us=to_us,
        updated_at_us=opened_at_us,
        severity=severity.strip().upper() if severity and severity.strip() else None,
        suspected_layer=layer,
        tenants=_unique(tenants),
        agents=_unique(agents),
        affected_sessions=affected,
        entries=(IncidentEntry(opened_at_us, _author(opened_by), "STATUS", "opened", affected),),
    )


def add_entry(
    incident: Incident,
    *,
    time_us: int,
    author: str,
    kind: str,
    text: str,
    sessions: Iterable[str] = (),
) -> Incident:
    """Append a NOTE, ACTION or DOWNSTREAM entry; its sessions join the affected sessions.

    A closed incident still takes entries: downstream clean-up (refunds, re-sent emails) and
    follow-up actions often happen after the incident itself is over.
    """
    kind = kind.upper()
    if kind not in NOTE_KINDS:
        raise ValueError(f"entry kind {kind!r}: choose one of {', '.join(NOTE_KINDS)}")
    text = text.strip()
    if not text:
        raise ValueError(f"an entry of {incident.incident_id} needs text")
    named = _unique(sessions)
    entry = IncidentEntry(time_us, _author(author), kind, text, named)
    return replace(
        incident,
        entries=(*incident.entries, entry),
        affected_sessions=_unique((*incident.affected_sessions, *named)),
        updated_at_us=max(incident.updated_at_us, time_us),
    )


def close_incident(
    incident: Incident,
    *,
    time_us: int,
    author: str,
    resolution: str,
    to_us: int | None = None,
) -> Incident:
    """CLOSED with a resolution; the range ends at ``to_us``, else where it was set, else now."""
    if incident.status == CLOSED:
        raise ValueError(
            f"incident {incident.incident_id} is already closed "
            f"({_when(incident.closed_at_us)} by {incident.closed_by}: {incident.resolution})"
        )
    resolution = resolution.strip()
    if not resolution:
        raise ValueError(f"closing {incident.incident_id} needs a resolution")
    end = next(t for t in (to_us, incident.to_us, time_us) if t is not None)
    _check_range(incident.from_us, end)
    who = _author(author)
    return replace(
        incident,
        status=CLOSED,
        closed_at_us=time_us,
        closed_by=who,
        resolution=resolution,
        to_us=end,
        updated_at_us=max(incident.updated_at_us, time_us),
        entries=(*incident.entries, IncidentEntry(time_us, who, "STATUS", f"closed: {resolution}")),
    )


def find_incident(incidents: Mapping[str, Incident], incident_id: str) -> Incident:
    found = incidents.get(incident_id)
    if found is None:
        raise ValueError(
            f"no incident {incident_id} in gov.incidents (governor incident list --all shows them)"
        )
    return found


def listed(incidents: Mapping[str, Incident], include_closed: bool) -> list[Incident]:
    """Incidents to list, oldest first; closed ones only when asked for."""
    chosen = [i for i in incidents.values() if include_closed or i.status == OPEN]
    return sorted(chosen, key=lambda i: (i.opened_at_us, i.incident_id))


def parse_layer(layer: str) -> str:
    upper = layer.strip().upper()
    if upper not in LAYERS:
        raise ValueError(f"layer {layer!r}: choose one of {', '.join(x.lower() for x in LAYERS)}")
    return upper


def _check_range(from_us: int, to_us: int | None) -> None:
    if to_us is not None and to_us < from_us:
        raise ValueError(f"the incident ends ({_when(to_us)}) before it begins ({_when(from_us)})")


def _author(name: str) -> str:
    return name.strip() or "unknown"


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    """Each value once, in the order first named, blanks dropped."""
    return tuple(dict.fromkeys(v.strip() for v in values if v.strip()))


def _when(time_us: int | None) -> str:
    if time_us is None:
        return "-"
    return datetime.fromtimestamp(time_us / 1_000_000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# --- the Avro record -------------------------------------------------------------------------


def to_record(incident: Incident) -> dict[str, Any]:
    """The Incident Avro record (also the ``--json`` shape of the CLI)."""
    return {
        "incident_id": incident.incident_id,
        "title": incident.title,
        "status": incident.status,
        "severity": incident.severity,
        "opened_at_us": incident.opened_at_us,
        "opened_by": incident.opened_by,
        "closed_at_us": incident.closed_at_us,
        "closed_by": incident.closed_by,
        "resolution": incident.resolution,
        "from_us": incident.from_us,
        "to_us": incident.to_us,
        "suspected_layer": incident.suspected_layer,
        "tenants": list(incident.tenants),
        "agents": list(incident.agents),
        "affected_sessions": list(incident.affected_sessions),
        "entries": [
            {
                "time_us": e.time_us,
                "author": e.author,
                "kind": e.kind,
                "text": e.text,
                "sessions": list(e.sessions),
            }
            for e in incident.entries
        ],
        "updated_at_us": incident.updated_at_us,
    }


def from_record(record: Mapping[str, Any]) -> Incident:
    return Incident(
        incident_id=record["incident_id"],
        title=record["title"],
        status=record["status"],
        severity=record["severity"],
        opened_at_us=record["opened_at_us"],
        opened_by=record["opened_by"],
        closed_at_us=record["closed_at_us"],
        closed_by=record["closed_by"],
        resolution=record["resolution"],
        from_us=record["from_us"],
        to_us=record["to_us"],
        suspected_layer=record["suspected_layer"],
        tenants=tuple(record["tenants"]),
        agents=tuple(record["agents"]),
        affected_sessions=tuple(record["affected_sessions"]),
        entries=tuple(
            IncidentEntry(e["time_us"], e["author"], e["kind"], e["text"], tuple(e["sessions"]))
            for e in record["entries"]
        ),
        updated_at_us=record["updated_at_us"],
    )


# --- I/O -------------------------------------------------------------------------------------


def publish_incident(settings: Settings, incident: Incident) -> None:
    """Write the incident's whole state to gov.incidents and wait until the broker has it."""
    codec = Codecs.load(settings.schemas_dir).incident
    publish_keyed(
        settings,
        settings.topic("incidents"),
        incident.incident_id.encode(),
        codec.encode(to_record(incident)),
    )


def load_incidents(settings: Settings) -> dict[str, Incident]:
    """Every incident's latest state, read from the compacted topic up to its end offsets."""
    codec = Codecs.load(settings.schemas_dir).incident
    return {
        key.decode(): from_record(codec.decode(value))
        for key, value in read_latest(settings, settings.topic("incidents")).items()
    }
