"""Policy versions: every set the worker accepted, kept in the compacted ``gov.policies`` with
its files, so an operator can see what was in force and roll back to it.

The worker publishes the set it accepts (at start and on every accepted reload) unless the
topic's latest record for that version already has the same digest. A rollback takes version
N's files from the topic, validates them in a temporary folder, writes them into the live
policies folder file by file (temp file + ``os.replace``) and lets the worker's one reload path
apply them.

If two different sets carry the same ``version:`` (a limit edited without a bump), the later
one replaces the earlier under that key: a version names the set last accepted with it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.codec import Codecs
from streams.pipeline.policy import PolicySet
from streams.policy_files import OTHER_FILES, PolicyError, files_digest, load_policy_set
from streams.settings import Settings
from streams.topics import publish_keyed, read_latest

log = logging.getLogger("governor.policies")


@dataclass(frozen=True)
class PolicyVersion:
    version: int
    digest: str
    accepted_at_us: int
    policies: tuple[str, ...]
    #: file name -> YAML text of every enforcement file of the set
    files: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rollback:
    """Who asked for a rollback, and why (audited with it)."""

    to_version: int
    reason: str
    by: str


class UnknownPolicyVersion(LookupError):
    def __init__(self, version: int, known: list[int]) -> None:
        listed = ", ".join(map(str, known)) or "none yet"
        super().__init__(f"no policy version {version} in gov.policies; known versions: {listed}")
        self.known = known


# --- pure ----------------------------------------------------------------------------------


def policy_version_of(
    policy_set: PolicySet, files: Mapping[str, str], accepted_at_us: int
) -> PolicyVersion:
    return PolicyVersion(
        version=policy_set.version,
        digest=policy_set.digest,
        accepted_at_us=accepted_at_us,
        policies=tuple(p.id for p in policy_set.policies),
        files=dict(files),
    )


def is_recorded(latest: Mapping[int, PolicyVersion], policy_set: PolicySet) -> bool:
    """True when the topic's latest record for the set's version is this very set."""
    known = latest.get(policy_set.version)
    return known is not None and known.digest == policy_set.digest


def rollback_request(body: Any) -> Rollback:
    """The body of ``POST /policies/rollback``: {"to_version": N, "reason": "...", "by": "..."}."""
    if not isinstance(body, dict):
        raise ValueError("the body is a JSON object with to_version, reason and by")
    version = body.get("to_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"to_version must be an integer, got {version!r}")
    return Rollback(version, str(body.get("reason") or ""), str(body.get("by") or "unknown"))


def history_answer(
    versions: Mapping[int, PolicyVersion], in_force: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``governor policy history``: every version, oldest first, and which one is in force
    (the worker's ``/policies`` answer; None when no worker answered, so nobody can tell)."""
    current = None if in_force is None else (in_force.get("version"), in_force.get("digest"))
    return {
        "worker_reachable": in_force is not None,
        "in_force": None if current is None else {"version": current[0], "digest": current[1]},
        "versions": [
            {
                "version": pv.version,
                "digest": pv.digest,
                "accepted_at_us": pv.accepted_at_us,
                "policies": list(pv.policies),
                "files": sorted(pv.files),
                "in_force": None if current is None else (pv.version, pv.digest) == current,
            }
            for pv in sorted(versions.values(), key=lambda pv: pv.version)
        ],
    }


def to_record(pv: PolicyVersion) -> dict[str, Any]:
    return {
        "version": pv.version,
        "digest": pv.digest,
        "accepted_at_us": pv.accepted_at_us,
        "policies": list(pv.policies),
        "files": dict(pv.files),
    }


def from_record(record: Mapping[str, Any]) -> PolicyVersion:
    return PolicyVersion(
        version=record["version"],
        digest=record["digest"],
        accepted_at_us=record["accepted_at_us"],
        policies=tuple(record["policies"]),
        files=dict(record["files"]),
    )


# --- files ---------------------------------------------------------------------------------


def enforcement_files(folder: Path) -> dict[str, str]:
    """Name -> text of the folder's enforcement files (not prices, pii or slo)."""
    return {
        path.name: path.read_text()
        for path in sorted(folder.glob("*.yaml"))
        if path.name not in OTHER_FILES
    }


def validate_version(pv: PolicyVersion) -> PolicySet:
    """Load version N's files in a temporary folder: the set they make, or PolicyError.

    The files must also reproduce the recorded digest, so what is installed is exactly what
    was accepted then.
    """
    with tempfile.TemporaryDirectory(prefix="governor-rollback-") as tmp:
        for name, text in pv.files.items():
            (Path(tmp) / name).write_bytes(text.encode())
        policy_set = load_policy_set(Path(tmp))
    if policy_set.digest != pv.digest or policy_set.version != pv.version:
        raise PolicyError(
            [
                f"gov.policies v{pv.version} ({pv.digest}): its files make "
                f"v{policy_set.version} ({policy_set.digest})"
            ]
        )
    return policy_set


def install_files(folder: Path, files: Mapping[str, str]) -> None:
    """Make ``files`` the folder's enforcement files: each written whole (temp file, then
    ``os.replace``), enforcement files not among them removed; prices, pii and slo untouched.

    A temp file does not end in ``.yaml``, so a reload never sees a half-written file.
    """
    for name in files:
        if Path(name).name != name or not name.endswith(".yaml") or name in OTHER_FILES:
            raise ValueError(f"refusing to write {name!r}: not an enforcement file name")
    for name, text in files.items():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".rollback")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(text.encode())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    for path in folder.glob("*.yaml"):
        if path.name not in OTHER_FILES and path.name not in files:
            path.unlink()


# --- Kafka ---------------------------------------------------------------------------------


def load_policy_versions(settings: Settings) -> dict[int, PolicyVersion]:
    """The latest record of every version in gov.policies."""
    codec = Codecs.load(settings.schemas_dir).policy_version
    versions = [
        from_record(codec.decode(value))
        for value in read_latest(settings, settings.topic("policies")).values()
    ]
    return {pv.version: pv for pv in sorted(versions, key=lambda pv: pv.version)}


def publish_policy_version(settings: Settings, pv: PolicyVersion) -> None:
    codec = Codecs.load(settings.schemas_dir).policy_version
    publish_keyed(
        settings, settings.topic("policies"), str(pv.version).encode(), codec.encode(to_record(pv))
    )


class PolicyHistory:
    """The worker's side: publishes each accepted set once, off the event loop, in order.

    One thread does the Kafka work, so publications keep the order the sets were accepted in
    and the event loop never waits for the broker.
    """

    def __init__(self, settings: Settings, accepted_dir: Path) -> None:
        self.settings = settings
        #: the folder holding exactly the files of the set in force (PolicyWatch's last good)
        self.accepted_dir = accepted_dir
        self._latest: dict[int, PolicyVersion] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-history")

    def accepted(self, policy_set: PolicySet) -> Future[None]:
        """Record ``policy_set`` (just accepted): its files are read now, published soon."""
        files = enforcement_files(self.accepted_dir)
        accepted_at_us = time.time_ns() // 1000
        return self._executor.submit(self._publish, policy_set, files, accepted_at_us)

    def _publish(self, policy_set: PolicySet, files: dict[str, str], accepted_at_us: int) -> None:
        try:
            if files_digest(files) != policy_set.digest:
                # the folder changed again between accepting and copying: the next accepted
                # reload publishes what is then in force
                log.warning("policies v%s: files changed before publication", policy_set.version)
                return
            if self._latest is None:
                self._latest = load_policy_versions(self.settings)
            if is_recorded(self._latest, policy_set):
                return
            pv = policy_version_of(policy_set, files, accepted_at_us)
            publish_policy_version(self.settings, pv)
            self._latest[pv.version] = pv
            log.info("policies v%s (%s) recorded in gov.policies", pv.version, pv.digest)
        except Exception:
            log.exception("could not record policies v%s in gov.policies", policy_set.version)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
