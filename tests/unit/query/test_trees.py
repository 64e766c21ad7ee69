"""Session trees: roll-ups over a session's descendants (streams.query.trees)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streams.query.trees import descendants, roots, session_trees


def summary(session_id: str, parent: str | None, cost: int, agent: str = "bot") -> dict[str, Any]:
    return {
        "session_id": session_id, "tenant_id": "acme", "agent_id": agent,
        "parent_session_id": parent, "cost_micros": cost, "input_tokens": cost * 2,
        "output_tokens": cost, "steps_by_kind": {"LLM_CALL": 2, "TOOL_CALL": 1, "ERROR": 5},
    }  # fmt: skip


def test_a_tree_rolls_cost_tokens_and_steps_up_over_every_descendant() -> None:
    sessions = {
        s["session_id"]: s
        for s in (
            summary("root", None, 100, "planner"),
            summary("child-a", "root", 30, "researcher"),
            summary("child-b", "root", 20, "coder"),
            summary("grandchild", "child-a", 5, "searcher"),
            summary("alone", None, 110),
            summary("orphan", "ended-earlier", 1),
        )
    }
    trees = session_trees(sessions)
    assert [(t.root, t.sessions, t.cost_micros) for t in trees] == [
        ("root", 4, 155),
        ("alone", 1, 110),
        ("orphan", 1, 1),
    ]
    root = trees[0]
    assert (root.input_tokens, root.output_tokens, root.steps, root.depth) == (310, 155, 12, 2)
    assert root.agents == ("acme/coder", "acme/planner", "acme/researcher", "acme/searcher")
    assert root.descendants == ("child-a", "child-b", "grandchild")  # by cost
    assert not root.parent_outside
    assert trees[2].parent_outside, "its parent did not end in the period asked about"
    assert descendants(sessions, "child-a") == ["grandchild"]
    assert descendants(sessions, "root") == ["child-a", "child-b", "grandchild"]


def test_a_cycle_is_cut_and_every_session_is_in_exactly_one_tree() -> None:
    sessions = {
        s["session_id"]: s
        for s in (summary("a", "b", 1), summary("b", "a", 2), summary("c", "a", 4))
    }
    [tree] = session_trees(sessions)
    assert (tree.sessions, tree.cost_micros, tree.parent_outside) == (3, 7, False)
    assert sorted(descendants(sessions, "a")) == ["b", "c"]


@given(st.lists(st.integers(0, 30), min_size=1, max_size=40))
def test_trees_partition_the_sessions_and_keep_the_total(parents: list[int]) -> None:
    """Random parent links (forests, cycles, links to sessions not given): every session is
    in exactly one tree, the totals add up to the sessions' own, and a root's descendants are
    its tree."""
    sessions = {
        f"s{i}": summary(f"s{i}", None if p == i else f"s{p}", i + 1) for i, p in enumerate(parents)
    }
    trees = session_trees(sessions)
    assert sum(t.sessions for t in trees) == len(sessions)
    assert sum(t.cost_micros for t in trees) == sum(s["cost_micros"] for s in sessions.values())
    root_of = roots({sid: s["parent_session_id"] for sid, s in sessions.items()})
    assert set(root_of) == set(sessions)
    for tree in trees:
        members = {sid for sid, root in root_of.items() if root == tree.root}
        assert len(members) == tree.sessions
        assert set(descendants(sessions, tree.root)) >= members - {tree.root}
