"""Loading and validating ``policies/*.yaml``: errors name the file, the line and the field.

A policy set is every ``*.yaml`` file of the folder but ``prices.yaml`` (the price table) and
the files other features own (``pii.yaml``, ``slo.yaml``). It is refused as a whole if any file
is invalid, so the last good set stays in force.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from streams.pipeline.pii import PiiPolicy
from streams.pipeline.policy import PolicyFile, PolicySet
from streams.pipeline.slo import Slo, SloFile

M = TypeVar("M", bound=BaseModel)

#: files in the policies folder that are not enforcement policies
OTHER_FILES = {"prices.yaml", "pii.yaml", "slo.yaml"}


class PolicyError(ValueError):
    """One or more problems in policy files, each as ``file:line: field: reason``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class LoadedYaml:
    data: Any
    #: line (1-based) of every key path, e.g. ("policies", 2, "limit_usd") -> 14
    lines: dict[tuple[Any, ...], int]


def load_yaml_with_lines(text: str) -> LoadedYaml:
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[tuple[Any, ...], int] = {}
    if node is None:
        return LoadedYaml(None, lines)
    return LoadedYaml(_build(node, (), lines), lines)


def _build(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            lines[(*path, key)] = key_node.start_mark.line + 1  # the key's line, not the value's
            result[key] = _build(value_node, (*path, key), lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _line_of(loaded: LoadedYaml, loc: tuple[Any, ...]) -> int:
    for end in range(len(loc), -1, -1):
        line = loaded.lines.get(tuple(loc[:end]))
        if line is not None:
            return line
    return 1


def parse_policy_file(path: Path, text: str) -> PolicyFile:
    """Validate one file; raises :class:`PolicyError` with file:line: field: reason."""
    return parse_model_file(path, text, PolicyFile)


#: without a pii.yaml: every structured entity is found and logged, nothing is blocked
DEFAULT_PII_POLICY = PiiPolicy(
    version=1,
    entities=[
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "CREDIT_CARD",
        "US_SSN",
        "IBAN_CODE",
        "IP_ADDRESS",
        "SECRET",
    ],
    default="log",
)


def load_slos(folder: Path) -> list[Slo]:
    """The SLOs of ``slo.yaml`` (none without the file)."""
    path = folder / "slo.yaml"
    if not path.exists():
        return []
    return list(parse_model_file(path, path.read_text(), SloFile).slos)


def load_pii_policy(folder: Path) -> PiiPolicy:
    """``pii.yaml`` of the folder, validated like every policy file (a default without one)."""
    path = folder / "pii.yaml"
    if not path.exists():
        return DEFAULT_PII_POLICY
    return parse_model_file(path, path.read_text(), PiiPolicy)


def parse_model_file(path: Path, text: str, model: type[M]) -> M:
    """Validate YAML ``text`` as ``model``; errors name file, line and field."""
    try:
        loaded = load_yaml_with_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise PolicyError([f"{path}:{line}: not valid YAML: {exc}"]) from exc
    if not isinstance(loaded.data, dict):
        raise PolicyError([f"{path}:1: a policy file is a mapping with 'version' and 'policies'"])
    try:
        return model.model_validate(loaded.data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(part for part in error["loc"] if not _is_union_tag(part))
            field = ".".join(str(p) for p in loc) or "(file)"
            problems.append(f"{path}:{_line_of(loaded, loc)}: {field}: {error['msg']}")
        raise PolicyError(problems) from exc


def _is_union_tag(part: Any) -> bool:
    # pydantic names the chosen member of a discriminated union in the location; drop it
    return isinstance(part, str) and part in PolicyFile.kind_tags()


def load_policy_set(folder: Path) -> PolicySet:
    """Every policy file of ``folder`` as one set; :class:`PolicyError` lists every problem."""
    files = sorted(p for p in folder.glob("*.yaml") if p.name not in OTHER_FILES)
    problems: list[str] = []
    parsed: list[tuple[Path, PolicyFile]] = []
    texts: dict[str, str] = {}
    for path in files:
        text = texts[path.name] = path.read_text()
        try:
            parsed.append((path, parse_policy_file(path, text)))
        except PolicyError as exc:
            problems.extend(exc.problems)
    seen: dict[str, Path] = {}
    for path, policy_file in parsed:
        for policy in policy_file.policies:
            if policy.id in seen:
                problems.append(
                    f"{path}:1: policies: id {policy.id!r} is also in {seen[policy.id]}"
                )
            seen[policy.id] = path
    if problems:
        raise PolicyError(problems)
    return PolicySet.build([pf for _, pf in parsed], digest=files_digest(texts))


def files_digest(files: Mapping[str, str]) -> str:
    """A policy set's digest: SHA-256 over every enforcement file's name and text, by name.

    The same texts under the same names give the same digest wherever they are stored, so a
    set restored from gov.policies is recognisably the one accepted before.
    """
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode())
    return digest.hexdigest()[:12]


class PolicyWatch:
    """The policy set in force, reloaded when the folder changes; a bad change is refused.

    Every accepted set is copied to ``last_good_dir``, so a worker that starts while the folder
    holds a broken file enforces the last good set instead of nothing.
    """

    def __init__(self, folder: Path, last_good_dir: Path) -> None:
        self.folder = folder
        self.last_good_dir = last_good_dir
        self.current: PolicySet | None = None
        self.last_error: PolicyError | None = None
        self._seen_digest: str | None = None

    def _digest(self) -> str:
        digest = hashlib.sha256()
        for path in sorted(p for p in self.folder.glob("*.yaml") if p.name not in OTHER_FILES):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()[:12]

    def load_initial(self) -> PolicySet:
        try:
            policy_set = load_policy_set(self.folder)
        except PolicyError as exc:
            self.last_error = exc
            self._seen_digest = self._digest()
            if not any(self.last_good_dir.glob("*.yaml")):
                raise
            policy_set = load_policy_set(self.last_good_dir)
        else:
            self._keep(policy_set)
        self.current = policy_set
        return policy_set

    def poll(self) -> PolicySet | None:
        """The new set if the folder changed and is valid; None if unchanged or refused."""
        digest = self._digest()
        if digest == self._seen_digest:
            return None
        self._seen_digest = digest
        try:
            policy_set = load_policy_set(self.folder)
        except PolicyError as exc:
            self.last_error = exc
            raise
        self.last_error = None
        if self.current is not None and policy_set.digest == self.current.digest:
            return None
        self._keep(policy_set)
        self.current = policy_set
        return policy_set

    def _keep(self, policy_set: PolicySet) -> None:
        self._seen_digest = self._digest()
        self.last_good_dir.mkdir(parents=True, exist_ok=True)
        for old in self.last_good_dir.glob("*.yaml"):
            old.unlink()
        for path in self.folder.glob("*.yaml"):
            if path.name not in OTHER_FILES:
                (self.last_good_dir / path.name).write_bytes(path.read_bytes())
