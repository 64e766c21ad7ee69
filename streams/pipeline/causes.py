"""What a failed session's mode says caused it (issue 19): a KILL names its policy, a TIMEOUT
its idle time.

The worker writes a KILLED session's cause into the summary's ``error_type`` when it decides
the KILL (:func:`killed_by`, no schema change: older summaries keep their ``None`` and read as
before); a TIMEOUT's cause is the worker's idle timeout, named by :func:`failure_cause`.
"""

from __future__ import annotations

#: the ``error_type`` of a session the worker killed: ``KILL by <policy id>``
KILLED_BY = "KILL by "


def killed_by(policy_id: str) -> str:
    """The ``error_type`` the worker gives a session it kills under ``policy_id``."""
    return f"{KILLED_BY}{policy_id}"


def killing_policy(error_type: str | None) -> str | None:
    """The policy of a ``KILL by <policy>`` error type, else None."""
    if error_type and error_type.startswith(KILLED_BY):
        return error_type[len(KILLED_BY) :]
    return None


def idle_text(seconds: float) -> str:
    """``15m``, ``90s``, ``2h``: an idle timeout as a person writes it."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def failure_cause(
    statuses: dict[str, int], error_type: str, idle_timeout_s: float | None = None
) -> str:
    """One phrase for a failure mode: which policy killed, how long it was idle, or the error.

    ``statuses`` are the outcomes the mode ended sessions with; ``error_type`` is the mode's
    (the session status itself when the session had none)."""
    policy = killing_policy(error_type)
    if policy is not None:
        return f"KILL by policy {policy}"
    if error_type == "KILLED":
        # killed by a decision the worker did not record a cause for (an older summary, a
        # fleet-wide budget decided outside the session): the decision is in the audit trail
        return "KILL (policy not recorded: see governor incident timeline)"
    if error_type == "TIMEOUT" or set(statuses) == {"TIMEOUT"}:
        idle = f"for {idle_text(idle_timeout_s)}" if idle_timeout_s else "past the idle timeout"
        after = "" if error_type == "TIMEOUT" else f" after {error_type}"
        return f"idle {idle}{after}"
    return error_type
