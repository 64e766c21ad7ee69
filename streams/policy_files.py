"""Loading and validating ``policies/``: errors name the file, the line and the field.

The folder is one bundle: the enforcement policies (every ``*.yaml`` file but the four below),
the price table (``prices.yaml``), the PII policy (``pii.yaml``), the SLOs (``slo.yaml``) and the
gateway's upstreams and keys (``gateway.yaml``, read by ``governor gateway``). It
is accepted or refused as a whole: one invalid file refuses the bundle, every problem is listed,
and the last good bundle stays in force. Nothing that looks like a policy file is ignored: a
``*.yml`` file (or ``.YAML``) is refused with the name to give it, so a policy is never silently
left out. An accepted bundle can still be dangerous (every tool denied, nothing enforced, a
default turned off): those are warnings, printed by ``governor policy check`` and logged by the
worker when it puts the bundle in force.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from streams.gateway.config import GatewayFile
from streams.pipeline.pii import PiiPolicy
from streams.pipeline.policy import PolicyFile, PolicySet
from streams.pipeline.pricing import PricesFile, PriceTable
from streams.pipeline.slo import Slo, SloFile

M = TypeVar("M", bound=BaseModel)

#: files in the policies folder that are not enforcement policies
OTHER_FILES = {"prices.yaml", "pii.yaml", "slo.yaml", "gateway.yaml"}
#: policy files are a few kB: anything this big is a mistake, not a policy
MAX_FILE_BYTES = 1 << 20
#: YAML aliases let a small file expand exponentially ("billion laughs"): cap what a file builds
MAX_NODES = 100_000
MAX_DEPTH = 32

#: how the refusal of a file that is not a mapping describes what it should be
_SHAPES: dict[type[BaseModel], str] = {
    PolicyFile: "a policy file is a mapping with 'version' and 'policies'",
    PricesFile: "prices.yaml is a mapping with 'version' and 'per_million_tokens'",
    PiiPolicy: "pii.yaml is a mapping with 'version', 'entities' and 'rules'",
    SloFile: "slo.yaml is a mapping with 'version' and 'slos'",
    GatewayFile: "gateway.yaml is a mapping with 'version', 'upstreams', 'routes' and 'keys'",
}


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


class _Shape(ValueError):
    """A YAML document this loader will not build (duplicate key, too big, too deep)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def load_yaml_with_lines(text: str) -> LoadedYaml:
    # libyaml's loader (PyYAML's wheels have it) composes the same nodes and marks ~15x faster:
    # a new client parses the policy folder at start (issue 14)
    node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    lines: dict[tuple[Any, ...], int] = {}
    if node is None:
        return LoadedYaml(None, lines)
    return LoadedYaml(_build(node, (), lines, [0]), lines)


def _build(
    node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int], built: list[int]
) -> Any:
    built[0] += 1
    if built[0] > MAX_NODES or len(path) > MAX_DEPTH:
        raise _Shape(node.start_mark.line + 1, "too large or too deeply nested (YAML aliases?)")
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            line = key_node.start_mark.line + 1
            try:
                repeated = key in result
            except TypeError:  # a list or mapping as a key
                raise _Shape(line, "a key must be a plain value") from None
            if repeated:
                # PyYAML keeps the last of two equal keys without a word: the first would be
                # silently ignored
                field_name = ".".join(str(p) for p in (*path, key))
                raise _Shape(line, f"{field_name}: duplicate key")
            lines[(*path, key)] = line  # the key's line, not the value's
            result[key] = _build(value_node, (*path, key), lines, built)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), lines, built) for i, item in enumerate(node.value)]
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


@dataclass(frozen=True)
class Parsed(Generic[M]):
    """A validated file with the lines of its fields, so warnings can cite them too."""

    path: Path
    model: M
    loaded: LoadedYaml

    def at(self, *loc: Any) -> str:
        """``file:line: field`` of a field of the file."""
        field_name = ".".join(str(p) for p in loc) or "(file)"
        return f"{self.path}:{_line_of(self.loaded, loc)}: {field_name}"


def parse_policy_file(path: Path, text: str) -> PolicyFile:
    """Validate one file; raises :class:`PolicyError` with file:line: field: reason."""
    return parse_model_file(path, text, PolicyFile)


def parse_model_file(path: Path, text: str, model: type[M]) -> M:
    """Validate YAML ``text`` as ``model``; errors name file, line and field."""
    return _parse(path, text, model).model


def _parse(path: Path, text: str, model: type[M]) -> Parsed[M]:
    try:
        loaded = load_yaml_with_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise PolicyError([f"{path}:{line}: not valid YAML: {exc}"]) from exc
    except _Shape as exc:
        raise PolicyError([f"{path}:{exc.line}: {exc}"]) from exc
    except RecursionError as exc:
        raise PolicyError([f"{path}:1: nested too deeply"]) from exc
    shape = _SHAPES.get(model, f"{model.__name__} is a mapping")
    if loaded.data is None:
        raise PolicyError([f"{path}:1: the file is empty: {shape}"])
    if not isinstance(loaded.data, dict):
        raise PolicyError([f"{path}:1: {shape}, not a {type(loaded.data).__name__}"])
    try:
        return Parsed(path, model.model_validate(loaded.data), loaded)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = _without_union_tags(tuple(error["loc"]))
            field_name = ".".join(str(p) for p in loc) or "(file)"
            reason = _reason(error["type"], error["msg"], error.get("input"))
            problems.append(f"{path}:{_line_of(loaded, loc)}: {field_name}: {reason}")
        raise PolicyError(problems) from exc


def _reason(kind: str, message: str, value: Any) -> str:
    """pydantic's message, with the offending value when it is a short scalar: "1e30" is a
    string to YAML (a float needs a dot and a signed exponent, 1.0e+30), which only the value
    makes plain. The files' own checks name the value already."""
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    if isinstance(value, dict | list) or len(repr(value)) > 40:
        return message
    return f"{message} (got {value!r})"


def _without_union_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic names the chosen member of a discriminated union right after the list index;
    # drop that one only: "max_duration" is a kind and a field of that kind
    tags = PolicyFile.kind_tags()
    return tuple(
        part
        for i, part in enumerate(loc)
        if not (part in tags and i > 0 and isinstance(loc[i - 1], int))
    )


# --- the folder's files --------------------------------------------------------------------


@dataclass(frozen=True)
class FolderTexts:
    """The text of every ``*.yaml`` file of a folder, and why any other YAML-ish file is not."""

    #: file name -> text, by name
    texts: dict[str, str]
    problems: list[str]


def _yaml_like(folder: Path) -> list[Path]:
    """Every entry a person would take for a YAML file: ``*.yaml`` and ``*.yml``, any case."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.name.lower().endswith((".yaml", ".yml"))]


def read_folder(folder: Path) -> FolderTexts:
    """Read the folder's ``*.yaml`` files; refuse, with the reason, what cannot be read."""
    texts: dict[str, str] = {}
    problems: list[str] = []
    if not folder.is_dir():
        return FolderTexts(texts, [f"{folder}: not a folder"])
    for path in _yaml_like(folder):
        if not path.name.endswith(".yaml"):
            stem = path.name.rsplit(".", 1)[0]
            problems.append(
                f"{path}:1: policy files end in .yaml (lower case) and this one would not be "
                f"read: rename it to {stem}.yaml"
            )
            continue
        try:
            if not path.is_file():
                problems.append(f"{path}:1: not a regular file")
                continue
            if path.stat().st_size > MAX_FILE_BYTES:
                problems.append(f"{path}:1: larger than {MAX_FILE_BYTES >> 20} MiB")
                continue
            texts[path.name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"{path}:1: not UTF-8 text ({exc.reason} at byte {exc.start})")
        except OSError as exc:
            problems.append(f"{path}:1: cannot be read: {exc.strerror or exc}")
    return FolderTexts(texts, problems)


def folder_digest(folder: Path) -> str:
    """A cheap fingerprint of the folder's YAML-ish files, to notice any change."""
    digest = hashlib.sha256()
    for path in _yaml_like(folder):
        digest.update(path.name.encode() + b"\0")
        try:
            digest.update(path.read_bytes() if path.is_file() else b"\1not a file")
        except OSError as exc:
            digest.update(f"\1{exc}".encode())
    return digest.hexdigest()[:12]


def files_digest(files: Mapping[str, str]) -> str:
    """A policy set's digest: SHA-256 over every enforcement file's name and text, by name.

    The same texts under the same names give the same digest wherever they are stored, so a
    set restored from gov.policies is recognisably the one accepted before.
    """
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode())
    return digest.hexdigest()[:12]


# --- the enforcement policies ---------------------------------------------------------------


def _parse_policies(
    folder: Path, texts: Mapping[str, str]
) -> tuple[list[Parsed[PolicyFile]], dict[str, str], list[str]]:
    """The enforcement files parsed, their texts, and every problem (duplicate ids across
    files too)."""
    enforcement = {n: t for n, t in sorted(texts.items()) if n not in OTHER_FILES}
    problems: list[str] = []
    parsed: list[Parsed[PolicyFile]] = []
    for name, text in enforcement.items():
        try:
            parsed.append(_parse(folder / name, text, PolicyFile))
        except PolicyError as exc:
            problems.extend(exc.problems)
    seen: dict[str, Path] = {}
    for pf in parsed:
        for i, policy in enumerate(pf.model.policies):
            if policy.id in seen:
                problems.append(
                    f"{pf.at('policies', i, 'id')}: id {policy.id!r} is also in {seen[policy.id]}"
                )
            seen[policy.id] = pf.path
    return parsed, enforcement, problems


def load_policy_set(folder: Path) -> PolicySet:
    """Every policy file of ``folder`` as one set; :class:`PolicyError` lists every problem."""
    files = read_folder(folder)
    parsed, enforcement, problems = _parse_policies(folder, files.texts)
    problems = [*files.problems, *problems]
    if problems:
        raise PolicyError(problems)
    return PolicySet.build([p.model for p in parsed], digest=files_digest(enforcement))


def policy_warnings(folder: Path, parsed: Sequence[Parsed[PolicyFile]]) -> list[str]:
    """What an accepted set does that is likely not meant: policies that refuse every tool,
    apply to nobody, are turned off or give up a default, and a set that enforces nothing."""
    warnings: list[str] = []
    enforced = 0
    for pf in parsed:
        for i, policy in enumerate(pf.model.policies):
            name = f"{policy.kind} policy {policy.id!r}"
            if not policy.enabled:
                warnings.append(
                    f"{pf.at('policies', i, 'enabled')}: {name} is disabled: it is not enforced"
                )
                continue
            enforced += 1
            for part in ("tenants", "agents"):
                if not getattr(policy.match, part):
                    warnings.append(
                        f"{pf.at('policies', i, 'match', part)}: empty: {name} "
                        f"matches no {part[:-1]} and is never enforced"
                    )
            if policy.kind == "tools":
                everything = [g for g in policy.deny if set(g) == {"*"}]
                if everything or not policy.allow:
                    what = f"deny {everything[0]!r}" if everything else "allow []"
                    warnings.append(
                        f"{pf.at('policies', i, 'deny' if everything else 'allow')}: {what}: "
                        f"{name} refuses every tool call ({policy.action.upper()}) of "
                        f"{_scope_text(policy.match)}"
                    )
            if policy.kind == "budget" and policy.warn_at is None:
                warnings.append(
                    f"{pf.at('policies', i, 'warn_at')}: null: {name} gives no "
                    "warning before its limit (the default warns at 80%)"
                )
    if not enforced:
        warnings.append(
            f"{folder}: no enforcement policy is in force (no policy file, no policy, or every "
            "policy disabled): budgets, tools, loops and rates are not enforced"
        )
    return warnings


def _scope_text(match: Any) -> str:
    return f"tenants {','.join(match.tenants)} / agents {','.join(match.agents)}"


# --- prices, PII, SLOs ----------------------------------------------------------------------


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


def _parse_other(
    folder: Path, texts: Mapping[str, str], name: str, model: type[M], problems: list[str]
) -> Parsed[M] | None:
    """``name`` of the folder validated as ``model``; None when absent or refused (problems)."""
    text = texts.get(name)
    if text is None:
        return None
    try:
        return _parse(folder / name, text, model)
    except PolicyError as exc:
        problems.extend(exc.problems)
        return None


def _load_one(folder: Path, name: str, model: type[M]) -> Parsed[M] | None:
    path = folder / name
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([f"{path}:1: cannot be read: {exc}"]) from exc
    return _parse(path, text, model)


def load_slos(folder: Path) -> list[Slo]:
    """The SLOs of ``slo.yaml`` (none without the file)."""
    parsed = _load_one(folder, "slo.yaml", SloFile)
    return [] if parsed is None else list(parsed.model.slos)


def load_pii_policy(folder: Path) -> PiiPolicy:
    """``pii.yaml`` of the folder, validated like every policy file (a default without one)."""
    parsed = _load_one(folder, "pii.yaml", PiiPolicy)
    return DEFAULT_PII_POLICY if parsed is None else parsed.model


def prices_warnings(folder: Path, parsed: Parsed[PricesFile] | None) -> list[str]:
    if parsed is None:
        return [
            f"{folder / 'prices.yaml'}:1: missing: no model has a price, every LLM call "
            "that arrives without a cost is unpriced"
        ]
    if not parsed.model.per_million_tokens:
        return [
            f"{parsed.at('per_million_tokens')}: empty: no model has a price, every LLM "
            "call that arrives without a cost is unpriced"
        ]
    return []


def pii_warnings(parsed: Parsed[PiiPolicy] | None) -> list[str]:
    """A pii.yaml that turns off what the worker does without one (scan every structured
    entity, record every finding)."""
    if parsed is None:
        return []
    policy, warnings = parsed.model, []
    dropped = [e for e in DEFAULT_PII_POLICY.entities if e not in policy.entities]
    if dropped:
        warnings.append(
            f"{parsed.at('entities')}: {', '.join(dropped)} not listed: never "
            "scanned (scanned by default)"
        )
    if policy.default == "allow":
        warnings.append(
            f"{parsed.at('default')}: allow: findings no rule covers are not "
            "recorded (logged by default)"
        )
    for i, rule in enumerate(policy.rules):
        if rule.handling == "allow" and any(set(g) == {"*"} for g in rule.entities):
            warnings.append(
                f"{parsed.at('rules', i, 'entities')}: '*' with handling allow: "
                f"no finding on {', '.join(rule.hops)} is recorded"
            )
    return warnings


# --- the bundle -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyBundle:
    """Everything the worker takes from the policies folder, accepted as a whole."""

    policies: PolicySet
    prices: PriceTable
    pii: PiiPolicy
    slos: list[Slo]
    #: accepted, but likely not meant: shown by ``policy check``, logged when put in force
    warnings: tuple[str, ...] = ()
    #: file name -> text of every file of the bundle (the last good copy is made of these)
    files: Mapping[str, str] = field(default_factory=dict)
    #: over every file of the bundle; ``policies.digest`` covers the enforcement files only
    digest: str = ""


def load_bundle(folder: Path, enforcement: Mapping[str, str] | None = None) -> PolicyBundle:
    """The folder as one bundle; :class:`PolicyError` lists every problem of every file.

    With ``enforcement`` (file name -> text), those replace the folder's enforcement files:
    the bundle a rollback would make, checked before anything is written.
    """
    files = read_folder(folder)
    if enforcement is not None:
        others = {n: t for n, t in files.texts.items() if n in OTHER_FILES}
        files = FolderTexts({**others, **enforcement}, files.problems)
    parsed, _, problems = _parse_policies(folder, files.texts)
    problems = [*files.problems, *problems]
    prices = _parse_other(folder, files.texts, "prices.yaml", PricesFile, problems)
    pii = _parse_other(folder, files.texts, "pii.yaml", PiiPolicy, problems)
    slo = _parse_other(folder, files.texts, "slo.yaml", SloFile, problems)
    _parse_other(folder, files.texts, "gateway.yaml", GatewayFile, problems)  # governor gateway
    if problems:
        raise PolicyError(problems)
    enforcement = {n: t for n, t in files.texts.items() if n not in OTHER_FILES}
    warnings = [
        *policy_warnings(folder, parsed),
        *prices_warnings(folder, prices),
        *pii_warnings(pii),
    ]
    return PolicyBundle(
        policies=PolicySet.build([p.model for p in parsed], digest=files_digest(enforcement)),
        prices=PriceTable({}) if prices is None else PriceTable.from_file(prices.model),
        pii=DEFAULT_PII_POLICY if pii is None else pii.model,
        slos=[] if slo is None else list(slo.model.slos),
        warnings=tuple(warnings),
        files=dict(files.texts),
        digest=files_digest(files.texts),
    )


def log_warnings(bundle: PolicyBundle, log: logging.Logger) -> None:
    """Each warning of a bundle being put in force, as a WARNING of its own."""
    for warning in bundle.warnings:
        log.warning("policy bundle %s in force with a warning: %s", bundle.digest, warning)


class PolicyWatch:
    """The bundle in force, reloaded when the folder changes; a bad change is refused.

    Every accepted bundle is copied to ``last_good_dir``, so a worker that starts while the
    folder holds a broken file enforces the last good bundle instead of nothing.
    """

    def __init__(self, folder: Path, last_good_dir: Path) -> None:
        self.folder = folder
        self.last_good_dir = last_good_dir
        self.current: PolicyBundle | None = None
        self.last_error: PolicyError | None = None
        self._seen_digest: str | None = None

    def load_initial(self) -> PolicyBundle:
        """The folder's bundle, or (with ``last_error`` set) the last good copy when the folder
        is refused; PolicyError when neither can be used."""
        self._seen_digest = folder_digest(self.folder)
        try:
            bundle = load_bundle(self.folder)
        except PolicyError as exc:
            self.last_error = exc
            if not any(self.last_good_dir.glob("*.yaml")):
                raise PolicyError(
                    [*exc.problems, f"{self.last_good_dir}: no last good copy to fall back on"]
                ) from exc
            try:
                bundle = load_bundle(self.last_good_dir)
            except PolicyError as fallback:
                raise PolicyError(
                    [
                        *exc.problems,
                        f"{self.last_good_dir}: the last good copy is refused too:",
                        *fallback.problems,
                    ]
                ) from fallback
        else:
            self.last_error = None
            self._keep(bundle)
        self.current = bundle
        return bundle

    def poll(self) -> PolicyBundle | None:
        """The new bundle if the folder changed and is valid; None if unchanged or refused
        before (a refusal raises PolicyError once, when the change is first seen)."""
        digest = folder_digest(self.folder)
        if digest == self._seen_digest:
            return None
        self._seen_digest = digest
        try:
            bundle = load_bundle(self.folder)
        except PolicyError as exc:
            self.last_error = exc
            raise
        self.last_error = None
        if self.current is not None and bundle.digest == self.current.digest:
            return None
        self._keep(bundle)
        self.current = bundle
        return bundle

    def _keep(self, bundle: PolicyBundle) -> None:
        """Make the last good copy exactly the bundle's files, each written whole."""
        self.last_good_dir.mkdir(parents=True, exist_ok=True)
        for name, text in bundle.files.items():
            fd, tmp = tempfile.mkstemp(dir=self.last_good_dir, prefix=f".{name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(text.encode())
                os.replace(tmp, self.last_good_dir / name)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        for old in self.last_good_dir.glob("*.yaml"):
            if old.name not in bundle.files:
                old.unlink()
