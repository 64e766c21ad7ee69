"""Drift on a real (private) Redis when Redis fails in the middle of a look: looking again finds
the same alert once, and a rebuild's re-added samples send nothing."""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis

from streams.query.drift import DriftDetector, DriftStore
from tests.summaries import summary


def fleet(first: int, n: int, prompt: str, llm_mean: float, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(first, first + n):
        llm = max(1, round(rng.gauss(llm_mean, 0.5)))
        out.append(
            summary(i, prompt_version=prompt, steps_by_kind={"LLM_CALL": llm},
                    tool_calls={"search": llm - 1}, output_tokens=100 * llm)
        )  # fmt: skip
    return out


class FlakyStore(DriftStore):
    """Raises a connection error on the ``fail_at``-th sample read, once."""

    def __init__(self, client: redis.Redis, fail_at: int) -> None:
        super().__init__(client, "t.")
        self.reads = 0
        self.fail_at = fail_at

    def samples(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        self.reads += 1
        if self.reads == self.fail_at:
            raise redis.ConnectionError("Redis went away")
        return super().samples(*args, **kwargs)


def test_a_look_that_fails_half_way_finds_its_alert_once_when_retried(
    client: redis.Redis,
) -> None:
    store = FlakyStore(client, fail_at=2)  # after the before-sample, before the after-sample
    detector = DriftDetector(store)
    assert detector.observe(fleet(0, 100, "p1", 2.0, 1)) == []
    looks = detector.add(fleet(100, 50, "p2", 6.0, 2))  # the 50th session: a checkpoint
    assert not looks.done
    with pytest.raises(redis.ConnectionError):
        detector.look(looks)
    assert store.alerts() == {}  # nothing written by the failed look
    detector.look(looks)
    assert looks.done
    assert [a["layer"] for a in looks.alerts] == ["prompt"]
    assert list(store.alerts().values()) == ["FIRING"]
    detector.look(looks)  # nothing due any more
    assert len(looks.alerts) == 1


def test_restored_alert_states_never_replace_newer_ones(client: redis.Redis) -> None:
    store = DriftStore(client, "t.")
    store.set_alert_state("a", "RESOLVED")
    assert store.restore_alert_states({"a": "FIRING", "b": "FIRING"}) == 1
    assert store.alerts() == {"a": "RESOLVED", "b": "FIRING"}


def test_re_adding_samples_reports_no_checkpoint(client: redis.Redis) -> None:
    detector = DriftDetector(DriftStore(client, "t."))
    sessions = fleet(0, 100, "p1", 2.0, 1) + fleet(100, 50, "p2", 6.0, 2)
    assert detector.add(sessions).due
    again = detector.add(sessions)
    assert again.done
    detector.look(again)
    assert again.alerts == []
