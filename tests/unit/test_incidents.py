"""The pure incident operations: open, note, close, ids, and the Avro record round trip."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from streams.codec import Codecs
from streams.incidents import (
    Incident,
    add_entry,
    check_incident_id,
    choose_incident_id,
    close_incident,
    find_incident,
    from_record,
    incident_id_for,
    listed,
    open_incident,
    to_record,
)

REPO = Path(__file__).resolve().parents[2]
T0 = 1_795_600_800_000_000  # 2026-11-25T10:00:00Z
MINUTE = 60_000_000


def opened(
    *,
    incident_id: str = "INC-20261125-1a2b",
    title: str = " support-bot refunds twice ",
    opened_at_us: int = T0,
    from_us: int | None = T0 - 30 * MINUTE,
    to_us: int | None = None,
    suspected_layer: str = "prompt",
    severity: str | None = None,
) -> Incident:
    return open_incident(
        incident_id=incident_id,
        title=title,
        opened_at_us=opened_at_us,
        opened_by="alice",
        from_us=from_us,
        to_us=to_us,
        severity=severity,
        suspected_layer=suspected_layer,
        tenants=["acme"],
        agents=["support-bot"],
        sessions=["s-1", "s-2", "s-1"],
    )


def test_an_opened_incident_is_open_with_its_range_layer_and_an_opening_entry() -> None:
    incident = opened()
    assert incident.status == "OPEN"
    assert incident.title == "support-bot refunds twice"
    assert (incident.from_us, incident.to_us) == (T0 - 30 * MINUTE, None)
    assert incident.suspected_layer == "PROMPT"
    assert incident.affected_sessions == ("s-1", "s-2")
    assert [(e.kind, e.author, e.text) for e in incident.entries] == [("STATUS", "alice", "opened")]
    assert incident.updated_at_us == T0


def test_the_range_starts_when_opened_unless_given() -> None:
    assert opened(from_us=None).from_us == T0


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"title": "  "}, "needs a title"),
        ({"suspected_layer": "database"}, "layer 'database': choose one of model, prompt"),
        ({"to_us": T0 - 60 * MINUTE}, "ends (2026-11-25 09:00:00Z) before it begins"),
    ],
)
def test_a_bad_incident_is_refused_with_a_reason(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        opened(**changes)


def test_entries_append_in_order_and_their_sessions_join_the_affected_ones() -> None:
    incident = opened()
    noted = add_entry(incident, time_us=T0 + MINUTE, author="bob", kind="note", text="p8 loops")
    acted = add_entry(
        noted,
        time_us=T0 + 2 * MINUTE,
        author="bob",
        kind="ACTION",
        text="rolled policies back to v1",
    )
    cleaned = add_entry(
        acted,
        time_us=T0 + 3 * MINUTE,
        author="carol",
        kind="DOWNSTREAM",
        text="refund 3 orders created by session s-3",
        sessions=["s-3", "s-1"],
    )
    assert [(e.kind, e.text) for e in cleaned.entries[1:]] == [
        ("NOTE", "p8 loops"),
        ("ACTION", "rolled policies back to v1"),
        ("DOWNSTREAM", "refund 3 orders created by session s-3"),
    ]
    assert cleaned.entries[-1].sessions == ("s-3", "s-1")
    assert cleaned.affected_sessions == ("s-1", "s-2", "s-3")
    assert cleaned.updated_at_us == T0 + 3 * MINUTE
    assert len(incident.entries) == 1, "the operations return new records"


@pytest.mark.parametrize(
    ("kind", "text", "words"),
    [("STATUS", "reopened", "entry kind 'STATUS'"), ("NOTE", " ", "needs text")],
)
def test_status_entries_and_empty_text_are_not_notes(kind: str, text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        add_entry(opened(), time_us=T0, author="bob", kind=kind, text=text)


def test_closing_sets_resolution_end_and_a_status_entry() -> None:
    closed = close_incident(
        opened(), time_us=T0 + 90 * MINUTE, author="alice", resolution="prompt p7 restored"
    )
    assert closed.status == "CLOSED"
    assert (closed.closed_at_us, closed.closed_by) == (T0 + 90 * MINUTE, "alice")
    assert closed.resolution == "prompt p7 restored"
    assert closed.to_us == T0 + 90 * MINUTE, "the range ends at the close unless given"
    assert (closed.entries[-1].kind, closed.entries[-1].text) == (
        "STATUS",
        "closed: prompt p7 restored",
    )


def test_closing_keeps_an_end_given_before_or_takes_the_one_given_now() -> None:
    ended = opened(to_us=T0 + 10 * MINUTE)
    assert close_incident(ended, time_us=T0 + 99 * MINUTE, author="a", resolution="r").to_us == (
        T0 + 10 * MINUTE
    )
    assert (
        close_incident(
            ended, time_us=T0 + 99 * MINUTE, author="a", resolution="r", to_us=T0 + 20 * MINUTE
        ).to_us
        == T0 + 20 * MINUTE
    )


def test_closing_twice_or_without_a_resolution_is_refused() -> None:
    closed = close_incident(opened(), time_us=T0 + MINUTE, author="alice", resolution="fixed")
    with pytest.raises(
        ValueError, match=r"INC-20261125-1a2b is already closed \(.* by alice: fixed\)"
    ):
        close_incident(closed, time_us=T0 + 2 * MINUTE, author="bob", resolution="again")
    with pytest.raises(ValueError, match="needs a resolution"):
        close_incident(opened(), time_us=T0 + MINUTE, author="alice", resolution="")


def test_a_closed_incident_still_takes_downstream_clean_up() -> None:
    closed = close_incident(opened(), time_us=T0 + MINUTE, author="alice", resolution="fixed")
    later = add_entry(
        closed, time_us=T0 + 9 * MINUTE, author="bob", kind="DOWNSTREAM", text="refunds done"
    )
    assert later.status == "CLOSED"
    assert later.entries[-1].text == "refunds done"


def test_an_unknown_incident_is_named() -> None:
    with pytest.raises(ValueError, match=r"no incident INC-nope in gov\.incidents"):
        find_incident({"INC-1": opened(incident_id="INC-1")}, "INC-nope")


def test_ids_carry_the_utc_day_and_re_roll_on_a_clash() -> None:
    assert incident_id_for(T0, "1a2b") == "INC-20261125-1a2b"
    rolls = iter(["1a2b", "1a2b", "ffff"])
    chosen = choose_incident_id(T0, {"INC-20261125-1a2b"}, random_hex=lambda: next(rolls))
    assert chosen == "INC-20261125-ffff"
    assert re.fullmatch(r"INC-20261125-[0-9a-f]{4}", choose_incident_id(T0, set()))


def test_a_given_id_must_be_a_new_plain_token() -> None:
    assert check_incident_id("INC-custom.1", set()) == "INC-custom.1"
    with pytest.raises(ValueError, match="already exists"):
        check_incident_id("INC-1", {"INC-1"})
    with pytest.raises(ValueError, match="use letters, digits"):
        check_incident_id("two words", set())


def test_listing_shows_open_ones_oldest_first_and_closed_ones_on_request() -> None:
    a = opened(incident_id="A", opened_at_us=T0 + 5)
    b = close_incident(
        opened(incident_id="B", opened_at_us=T0), time_us=T0 + 9, author="x", resolution="y"
    )
    c = opened(incident_id="C", opened_at_us=T0 + 1)
    incidents = {i.incident_id: i for i in (a, b, c)}
    assert [i.incident_id for i in listed(incidents, include_closed=False)] == ["C", "A"]
    assert [i.incident_id for i in listed(incidents, include_closed=True)] == ["B", "C", "A"]


def test_the_record_round_trips_through_the_avro_codec() -> None:
    incident = close_incident(
        add_entry(
            opened(severity="sev2"),
            time_us=T0 + MINUTE,
            author="bob",
            kind="DOWNSTREAM",
            text="refund",
            sessions=["s-9"],
        ),
        time_us=T0 + 2 * MINUTE,
        author="alice",
        resolution="fixed",
    )
    codec = Codecs.load(REPO / "schemas").incident
    assert from_record(codec.decode(codec.encode(to_record(incident)))) == incident
    assert incident.severity == "SEV2"
