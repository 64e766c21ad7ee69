"""Session trees (pure): agents that call agents, rolled up over a session's descendants.

A session names the session that started it (``parent_session_id``, from its SESSION_START's
``governor.parent_session_id``: the client's ``Governor.session(parent=...)``, an OTel agent
span whose parent span is in another conversation, the OTLP receiver). A tree is a session with
every session below it. Only what is known counts: the sessions given (those that ended in the
period asked about); a member whose parent is not among them is the root of its tree, flagged
``parent_outside``. A cycle (two sessions naming each other) is cut where it is found.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: descendants listed per tree (the totals count all of them)
LISTED_DESCENDANTS = 20


@dataclass(frozen=True)
class SessionTree:
    """A root session and the totals of its tree (itself included)."""

    root: str
    #: the root names a parent that is not among the sessions given
    parent_outside: bool
    sessions: int
    depth: int
    cost_micros: int
    input_tokens: int
    output_tokens: int
    steps: int
    agents: tuple[str, ...]
    #: the first LISTED_DESCENDANTS descendants, by cost (highest first)
    descendants: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "parent_outside": self.parent_outside,
            "sessions": self.sessions,
            "depth": self.depth,
            "cost_usd": self.cost_micros / 1e6,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "steps": self.steps,
            "agents": list(self.agents),
            "descendants": list(self.descendants),
        }


def roots(parents: Mapping[str, str | None]) -> dict[str, str]:
    """session -> the root of its tree, over the sessions of ``parents`` (session -> parent)."""
    found: dict[str, str] = {}
    for session in parents:
        path = [session]
        seen = {session}
        current = session
        while True:
            parent = parents.get(current)
            if parent is None or parent not in parents:
                root = current
                break
            if parent in found:
                root = found[parent]
                break
            if parent in seen:  # a cycle: cut it here
                root = current
                break
            seen.add(parent)
            path.append(parent)
            current = parent
        for member in path:
            found[member] = root
    return found


def steps_of(summary: Mapping[str, Any]) -> int:
    by_kind = summary.get("steps_by_kind") or {}
    return int(by_kind.get("LLM_CALL", 0)) + int(by_kind.get("TOOL_CALL", 0))


def session_trees(summaries: Mapping[str, Mapping[str, Any]]) -> list[SessionTree]:
    """Every tree of ``summaries`` (session id -> compact summary), highest total cost first."""
    parents = {sid: s.get("parent_session_id") for sid, s in summaries.items()}
    root_of = roots(parents)
    members: dict[str, list[str]] = {}
    for session, root in root_of.items():
        members.setdefault(root, []).append(session)
    depth = _depths(parents, root_of)
    trees = []
    for root, group in members.items():
        rows = [summaries[m] for m in group]
        below = sorted((m for m in group if m != root),
                       key=lambda m: (-summaries[m]["cost_micros"], m))  # fmt: skip
        parent = parents.get(root)
        trees.append(
            SessionTree(
                root=root,
                parent_outside=parent is not None and parent not in summaries,
                sessions=len(group),
                depth=max(depth[m] for m in group),
                cost_micros=sum(int(r["cost_micros"]) for r in rows),
                input_tokens=sum(int(r.get("input_tokens") or 0) for r in rows),
                output_tokens=sum(int(r.get("output_tokens") or 0) for r in rows),
                steps=sum(steps_of(r) for r in rows),
                agents=tuple(sorted({f"{r['tenant_id']}/{r['agent_id']}" for r in rows})),
                descendants=tuple(below[:LISTED_DESCENDANTS]),
            )
        )
    return sorted(trees, key=lambda t: (-t.cost_micros, t.root))


def _depths(parents: Mapping[str, str | None], root_of: Mapping[str, str]) -> dict[str, int]:
    """How far below its root each session is (the root: 0)."""
    depth: dict[str, int] = {}
    for session in parents:
        chain = []
        current = session
        while current not in depth and current != root_of[current]:
            chain.append(current)
            parent = parents[current]
            assert parent is not None  # not a root, so it has a parent among the sessions
            current = parent
        base = depth.setdefault(current, 0)
        for n, member in enumerate(reversed(chain), start=1):
            depth[member] = base + n
    return depth


def descendants(summaries: Mapping[str, Mapping[str, Any]], session_id: str) -> list[str]:
    """Every session below ``session_id`` among ``summaries``, breadth first (each once)."""
    children: dict[str, list[str]] = {}
    for sid, s in summaries.items():
        parent = s.get("parent_session_id")
        if parent is not None and parent != sid:
            children.setdefault(parent, []).append(sid)
    found: list[str] = []
    seen = {session_id}
    frontier = [session_id]
    while frontier:
        next_level = []
        for parent in frontier:
            for child in sorted(children.get(parent, ())):
                if child not in seen:
                    seen.add(child)
                    found.append(child)
                    next_level.append(child)
        frontier = next_level
    return found
