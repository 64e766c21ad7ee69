"""Drift samples in Redis, the detector that turns them into alerts, and `governor ask drift`.

Per scope (``tenant/agent``) and version tuple: a sorted set of session ids by start time, a
hash of their compact samples and a running count. The count comes back from the same Lua call
that adds a sample, so every count is seen exactly once — by whichever worker added it — and the
detector looks at a version exactly at its checkpoints, however the sessions are spread over
workers. A redelivered summary adds nothing (the session id is already a member). Like the
read-model, all of it can be rebuilt from gov.sessions, and the alert states from gov.alerts
(:mod:`streams.query.rebuild`): a rebuild restores state and sends no alert.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from streams.pipeline.drift import (
    Comparison,
    DriftConfig,
    changed_layers,
    compare,
    describe_change,
    headline,
    sample,
    suspect_layer,
    version_checkpoints,
    version_label,
    window_checkpoint,
)
from streams.runbooks import runbook_url

log = logging.getLogger(__name__)

#: the drift alert's runbook (streams.runbooks: relative, or GOVERNOR_RUNBOOK_BASE_URL)
RUNBOOK_ALERT = "GovernorDrift"

ADD = """
-- KEYS: scopes, versions (vkey -> first start), counts (vkey -> sessions), ids, samples
-- ARGV: scope, vkey, start, session id, sample json, cap, ttl
if redis.call('ZADD', KEYS[4], 'NX', ARGV[3], ARGV[4]) == 0 then return 0 end
redis.call('HSET', KEYS[5], ARGV[4], ARGV[5])
redis.call('SADD', KEYS[1], ARGV[1])
local first = redis.call('HGET', KEYS[2], ARGV[2])
if (not first) or tonumber(ARGV[3]) < tonumber(first) then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
local n = redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
local cap = tonumber(ARGV[6])
local size = redis.call('ZCARD', KEYS[4])
if size > cap then
  local old = redis.call('ZRANGE', KEYS[4], 0, size - cap - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, size - cap - 1)
  redis.call('HDEL', KEYS[5], unpack(old))
end
for i = 1, 5 do redis.call('EXPIRE', KEYS[i], ARGV[7]) end
return n
"""


@dataclass(frozen=True)
class Version:
    versions: tuple[str, ...]
    first_us: int
    sessions: int

    @property
    def key(self) -> str:
        return json.dumps(list(self.versions), separators=(",", ":"))

    @property
    def label(self) -> str:
        return version_label(self.versions)


class DriftStore:
    def __init__(
        self,
        client: redis.Redis,
        key_prefix: str,
        retention_days: int = 35,
        cap_per_version: int = 5000,
    ) -> None:
        self.redis = client
        self.prefix = key_prefix
        self.ttl_s = retention_days * 86_400
        self.cap = cap_per_version
        self._add = client.register_script(ADD)

    def _key(self, kind: str, scope: str = "", vkey: str = "") -> str:
        return f"{self.prefix}drift:{kind}:{scope}:{vkey}"

    def add(self, samples: Iterable[tuple[str, dict[str, Any]]]) -> list[int]:
        """Add (scope, sample) pairs; per pair the version's new session count, 0 if known."""
        pipe = self.redis.pipeline(transaction=False)
        n = 0
        for scope, s in samples:
            vkey = json.dumps(s["v"], separators=(",", ":"))
            self._add(
                keys=[self._key("scopes"), self._key("versions", scope),
                      self._key("counts", scope), self._key("ids", scope, vkey),
                      self._key("samples", scope, vkey)],
                args=[scope, vkey, s["t"], s["sid"], json.dumps(s, separators=(",", ":")),
                      self.cap, self.ttl_s],
                client=pipe,
            )  # fmt: skip
            n += 1
        return [int(x) for x in pipe.execute()] if n else []

    def scopes(self) -> list[str]:
        return sorted(_text(m) for m in self.redis.smembers(self._key("scopes")))

    def versions(self, scope: str) -> list[Version]:
        """The scope's version tuples, oldest first."""
        firsts = self.redis.hgetall(self._key("versions", scope))
        counts = self.redis.hgetall(self._key("counts", scope))
        found = [
            Version(tuple(json.loads(k)), int(v), int(counts.get(k, 0))) for k, v in firsts.items()
        ]
        return sorted(found, key=lambda v: (v.first_us, v.key))

    def samples(
        self, scope: str, version: Version, *, first: int | None = None, last: int | None = None,
        since_us: int | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """The version's samples by start time: the ``first`` n, the ``last`` n, or all (from
        ``since_us`` on)."""
        ids_key = self._key("ids", scope, version.key)
        if since_us is not None:
            found = self.redis.zrangebyscore(ids_key, since_us, "+inf")
        elif first is not None:
            found = self.redis.zrange(ids_key, 0, first - 1)
        elif last is not None:
            found = self.redis.zrange(ids_key, -last, -1)
        else:
            found = self.redis.zrange(ids_key, 0, -1)
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in found]
        if not ids:
            return []
        raw = self.redis.hmget(self._key("samples", scope, version.key), ids)
        return [json.loads(r) for r in raw if r is not None]

    def alert_state(self, alert_id: str) -> str | None:
        state = self.redis.hget(self._key("alerts"), alert_id)
        return _text(state) if state is not None else None

    def set_alert_state(self, alert_id: str, state: str) -> None:
        self.redis.hset(self._key("alerts"), alert_id, state)

    def set_alert_states(self, states: Mapping[str, str]) -> None:
        """Several at once, atomically (one HSET)."""
        if states:
            fields: dict[FieldT, EncodableT] = {k: v for k, v in states.items()}
            self.redis.hset(self._key("alerts"), mapping=fields)

    def alerts(self) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.redis.hgetall(self._key("alerts")).items()}

    def restore_alert_states(self, states: Mapping[str, str]) -> int:
        """Put back alert states (a rebuild, from gov.alerts) that Redis lacks: a state Redis
        holds is never older than the one on the topic (it is set before the alert is sent).
        Returns how many were restored."""
        if not states:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for alert_id, state in sorted(states.items()):
            pipe.hsetnx(self._key("alerts"), alert_id, state)
        return sum(int(x) for x in pipe.execute())


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def scope_of(summary: Mapping[str, Any]) -> str:
    return f"{summary['tenant_id']}/{summary['agent_id']}"


def previous_version(versions: Sequence[Version], current: Version) -> Version | None:
    """The version a scope ran before ``current`` appeared (the latest one that came first)."""
    earlier = [v for v in versions if v.first_us < current.first_us and v.key != current.key]
    return earlier[-1] if earlier else None


@dataclass
class DriftLooks:
    """The checkpoints a batch of samples reached, not looked at yet, and the alerts found so
    far: what a retry after a fault resumes from. Adding a sample returns its count only once,
    so the counts must outlive a failed look."""

    #: (scope, version key) -> the version's new session counts
    due: dict[tuple[str, str], list[int]]
    alerts: list[dict[str, Any]]

    @property
    def done(self) -> bool:
        return not self.due


class DriftDetector:
    """Looks at a scope's versions at their checkpoints and returns the Alert records due."""

    def __init__(self, store: DriftStore, config: DriftConfig | None = None) -> None:
        self.store = store
        self.config = config or DriftConfig()

    def observe(self, summaries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        looks = self.add(summaries)
        self.look(looks)
        return looks.alerts

    def add(self, summaries: Sequence[Mapping[str, Any]]) -> DriftLooks:
        """Add the sessions' samples; the checkpoints they reached, for :meth:`look`."""
        pairs = [(scope_of(s), sample(s)) for s in summaries]
        counts = self.store.add(pairs)
        due: dict[tuple[str, str], list[int]] = {}
        for (scope, s), n in zip(pairs, counts, strict=True):
            if n:
                due.setdefault((scope, json.dumps(s["v"], separators=(",", ":"))), []).append(n)
        return DriftLooks(due, [])

    def look(self, looks: DriftLooks) -> None:
        """Look at every checkpoint due, moving each done one's alerts into ``looks.alerts``:
        after a failure, calling it again resumes with the first scope not done."""
        for scope, vkey in sorted(looks.due):
            versions = self.store.versions(scope)
            current = next((v for v in versions if v.key == vkey), None)
            found: list[dict[str, Any]] = []
            # every read first, the alert states last and at once: a look that fails half-way
            # has changed nothing, so looking again finds the same alerts
            states: dict[str, str] = {}
            if current is not None:
                for n in sorted(looks.due[(scope, vkey)]):
                    found.extend(self._look(scope, versions, current, n, states))
            self.store.set_alert_states(states)
            looks.alerts.extend(found)
            del looks.due[(scope, vkey)]

    def _look(
        self,
        scope: str,
        versions: Sequence[Version],
        current: Version,
        n: int,
        states: dict[str, str],
    ) -> list[dict[str, Any]]:
        """The alerts due at checkpoint ``n``; the new alert states go into ``states`` (read
        before the store's), for the caller to write."""

        def state_of(alert_id: str) -> str | None:
            return states[alert_id] if alert_id in states else self.store.alert_state(alert_id)

        config = self.config
        out: list[dict[str, Any]] = []
        previous = previous_version(versions, current)
        if previous is not None and version_checkpoints(previous.sessions, n, config):
            alert_id = f"drift:{scope}:{previous.key}->{current.key}"
            if state_of(alert_id) is None:
                before = self.store.samples(scope, previous, last=config.max_before)
                after = self.store.samples(scope, current, first=n)
                result = compare(before, after, config)
                if result.shifted:
                    states[alert_id] = "FIRING"
                    out.append(change_alert(alert_id, scope, previous, current, after, result))
        if window_checkpoint(n, config):
            alert_id = f"drift:{scope}:unversioned:{current.key}"
            baseline = self.store.samples(scope, current, first=config.baseline_sessions)
            recent = self.store.samples(scope, current, last=config.window_sessions)
            result = compare(baseline, recent, config, window=True)
            state = state_of(alert_id)
            if result.shifted and state != "FIRING":
                states[alert_id] = "FIRING"
                out.append(window_alert(alert_id, scope, current, recent, result, "FIRING"))
            elif not result.shifted and state == "FIRING":
                states[alert_id] = "RESOLVED"
                out.append(window_alert(alert_id, scope, current, recent, result, "RESOLVED"))
        return out


def _values(result: Comparison) -> dict[str, float]:
    values: dict[str, float] = {}
    for row in result.shifted:
        values[f"{row.metric}|{row.effect_name}"] = row.effect
        values[f"{row.metric}|p_adjusted"] = row.p_adjusted
    return values


def change_alert(
    alert_id: str,
    scope: str,
    previous: Version,
    current: Version,
    after: Sequence[Mapping[str, Any]],
    result: Comparison,
) -> dict[str, Any]:
    tenant, agent = scope.split("/", 1)
    layers = changed_layers(previous.versions, current.versions)
    shifts = "; ".join(headline(r) for r in result.shifted)
    return {
        "alert_id": alert_id,
        "kind": "DRIFT",
        "state": "FIRING",
        "severity": "TICKET",
        "tenant_id": tenant,
        "agent_id": agent,
        "slo": None,
        "layer": "+".join(layers),
        "summary": f"{scope} behaves differently after {describe_change(previous.versions, current.versions)}: {shifts}",  # noqa: E501
        "description": f"{result.n_after} sessions after vs {result.n_before} before; "
        f"`governor ask drift --agent {agent} --tenant {tenant}` shows the table",
        "event_time_us": max(int(s["t"]) for s in after),
        "started_at_us": current.first_us,
        "labels": {
            "from": previous.label,
            "to": current.label,
            "metrics": ",".join(r.metric for r in result.shifted),
        },
        "values": {
            **_values(result),
            "sessions_before": float(result.n_before),
            "sessions_after": float(result.n_after),
        },
        "runbook_url": runbook_url(RUNBOOK_ALERT),
    }


def window_alert(
    alert_id: str,
    scope: str,
    current: Version,
    recent: Sequence[Mapping[str, Any]],
    result: Comparison,
    state: str,
) -> dict[str, Any]:
    tenant, agent = scope.split("/", 1)
    shifts = "; ".join(headline(r) for r in result.shifted) or "back to its baseline"
    return {
        "alert_id": alert_id,
        "kind": "DRIFT",
        "state": state,
        "severity": "TICKET",
        "tenant_id": tenant,
        "agent_id": agent,
        "slo": None,
        "layer": suspect_layer(result.shifted) if result.shifted else None,
        "summary": f"{scope} drifted with no version change ({current.label}): {shifts}",
        "description": f"latest {result.n_after} sessions vs the baseline of the first "
        f"{result.n_before} of this version; a provider may have changed the model behind "
        "the same name, or a tool's behaviour changed",
        "event_time_us": max(int(s["t"]) for s in recent),
        "started_at_us": None,
        "labels": {
            "versions": current.label,
            "metrics": ",".join(r.metric for r in result.shifted),
        },
        "values": _values(result),
        "runbook_url": runbook_url(RUNBOOK_ALERT),
    }


# --- `governor ask drift` ----------------------------------------------------------------


def drift_report(
    store: DriftStore,
    agent: str,
    *,
    tenant: str | None = None,
    since_us: int | None = None,
    config: DriftConfig | None = None,
) -> dict[str, Any]:
    """Per scope running ``agent``: the latest version change (since ``since_us``) compared
    before/after, or, without one, the recent window against the version's baseline."""
    config = config or DriftConfig()
    scopes = [s for s in store.scopes() if s.split("/", 1)[1] == agent]
    if tenant is not None:
        scopes = [s for s in scopes if s.split("/", 1)[0] == tenant]
    alerts = store.alerts()
    out: list[dict[str, Any]] = []
    for scope in scopes:
        versions = store.versions(scope)
        if not versions:
            continue
        current = versions[-1]
        previous = previous_version(versions, current)
        if previous is not None and (since_us is None or current.first_us >= since_us):
            before = store.samples(scope, previous, last=config.max_before)
            after = store.samples(scope, current, first=config.max_before)
            kind = "version change"
            label = describe_change(previous.versions, current.versions)
            layers = changed_layers(previous.versions, current.versions)
        else:
            pool = store.samples(scope, current, since_us=since_us)
            before = pool[: config.baseline_sessions]
            after = pool[config.baseline_sessions :][-config.window_sessions :]
            kind, label, layers = "no version change", current.label, []
        result = compare(before, after, config, window=kind != "version change")
        out.append(
            {
                "scope": scope,
                "kind": kind,
                "change": label,
                "layers": layers,
                "versions": [
                    {"versions": v.label, "first_seen_us": v.first_us, "sessions": v.sessions}
                    for v in versions
                ],
                "alerts": {k: v for k, v in alerts.items() if k.startswith(f"drift:{scope}:")},
                **result.as_dict(),
            }
        )
    return {"agent": agent, "tenant": tenant, "since_us": since_us, "scopes": out}
