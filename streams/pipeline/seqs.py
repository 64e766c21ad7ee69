"""Which seqs of a session to apply: at most once each, in any order within a window (pure).

A session's events carry ``seq`` 1, 2, 3, ... and the worker applies each seq once (that is
its at-least-once dedup). Events from one client arrive in order, but several ``governor
ingest`` processes serving one session at once can produce seq 7 before seq 5 (each numbers
and sends its own request). So beside ``last_seq`` (the highest applied) a session keeps a
bitmask of the :data:`WINDOW` seqs just below it that were **not** applied yet: bit ``i``
set means seq ``last_seq - 1 - i`` is still open, and it is applied once when it comes.

- A seq above ``last_seq``: applied; the seqs it skipped are open (and counted in
  ``missing_events``, as before) and the window slides up.
- An open seq below ``last_seq``: applied late; it is no longer missing.
- Any other seq (applied already, or older than the window): a duplicate.
- The seqs below a session's first applied one are open too (another receiver's SESSION_START
  may still come) but never counted as missing (a resumed session starts high); one of them
  applied late makes the ones between it and the old first missing instead.

``missing_events`` therefore stays "seqs skipped between applied ones, not (yet) seen". A seq
older than ``WINDOW`` below the highest is taken for a duplicate, as every late seq was before.
A checkpoint without a window (older versions) restores with none: nothing below its
``last_seq`` is open, exactly the old behaviour, until new gaps open.
"""

from __future__ import annotations

#: seqs below the highest that can still be applied late (63 bits: a JSON/Avro long)
WINDOW = 63
_FULL = (1 << WINDOW) - 1

#: what a session remembers of its seqs (fields of ``SessionState``): the highest seq applied;
#: the open seqs below it (bit i: seq ``last_seq - 1 - i`` not applied yet); the lowest seq
#: applied (0: not known, a checkpoint from before the window); the seqs missing so far
SeqOrder = tuple[int, int, int, int]


def admit(
    last: int, open_below: int, first: int, missing: int, seq: int, first_event: bool
) -> SeqOrder | None:
    """``(last_seq, open_below, first_seq, missing_events)`` after applying ``seq``, or None
    when ``seq`` is not to be applied (a duplicate, or older than the window).
    ``first_event``: nothing applied yet. Plain ints in and out: the worker calls this for
    every event."""
    if seq == last + 1 and not first_event:  # in order: the common case
        return seq, (open_below << 1) & _FULL, first, missing
    if first_event:
        below = min(seq - 1, WINDOW)
        return seq, (1 << below) - 1 if below > 0 else 0, seq, 0
    if seq > last:
        gap = seq - last - 1
        shifted = (open_below << (gap + 1)) | ((1 << min(gap, WINDOW)) - 1)
        return seq, shifted & _FULL, first, missing + gap
    bit = last - 1 - seq
    if seq <= 0 or seq == last or bit >= WINDOW or not (open_below >> bit) & 1:
        return None
    open_below &= ~(1 << bit)
    if first and seq < first:  # below the first applied: the seqs between are now skipped
        return last, open_below, seq, missing + first - seq - 1
    return last, open_below, first, max(0, missing - 1)
