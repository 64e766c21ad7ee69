"""``policies/gateway.yaml``: the gateway's upstreams, routes and keys (validated, no secrets).

    version: 1
    upstreams:
      openai: {api: openai, base_url: "https://api.openai.com/v1", key_env: OPENAI_API_KEY}
      anthropic: {api: anthropic, base_url: "https://api.anthropic.com", key_env: ANTHROPIC_API_KEY}
    routes:
      - {models: ["gpt-*", "text-embedding-*"], upstream: openai}
      - {models: ["claude-*"], upstream: anthropic}
    keys:
      - {sha256: "<64 hex>", tenant: acme, agent: support-bot}

A provider key is never in the file: ``key_env`` names the environment variable of the gateway
process that holds it. A gateway key is never in the file either, only its SHA-256
(``printf %s "$KEY" | sha256sum``); clients send the key itself (``Authorization: Bearer`` or
``x-api-key``) and the gateway maps it to its tenant and agent. Validated like every policy file
(errors name file:line: field), by ``governor policy check`` and when the gateway starts.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, Field, model_validator

from streams.pipeline.policy import FILE_MODEL_CONFIG, Version

FILE_NAME = "gateway.yaml"
Api = Literal["openai", "anthropic"]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")]


class Upstream(BaseModel):
    """A provider endpoint the gateway forwards to, with the key it holds for it."""

    model_config = FILE_MODEL_CONFIG
    #: the API the upstream speaks (requests are forwarded in the API they arrive in)
    api: Api
    #: what the provider's SDK takes as its base URL (OpenAI's ends in /v1, Anthropic's does not)
    base_url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]
    #: the environment variable holding the provider key ("" : the upstream needs none)
    key_env: Annotated[str, Field(pattern=r"^([A-Z_][A-Z0-9_]{0,127})?$")]
    #: seconds for the whole response to start (and between streamed chunks)
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    #: further attempts on a connect error, a 5xx or a 429, before anything reached the client
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    retry_backoff_s: Annotated[float, Field(ge=0, le=60)] = 0.25

    @model_validator(mode="after")
    def _no_trailing_slash(self) -> Self:
        if self.base_url.endswith("/"):
            raise ValueError(f"base_url {self.base_url!r}: drop the trailing '/'")
        return self


class Route(BaseModel):
    """Models (globs) served by an upstream; the first route that matches the model and
    speaks the request's API is taken."""

    model_config = FILE_MODEL_CONFIG
    models: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    upstream: Name


class GatewayKey(BaseModel):
    """A client key (by its SHA-256) and who it identifies."""

    model_config = FILE_MODEL_CONFIG
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    tenant: Name
    agent: Name
    agent_version: str | None = None
    description: str = ""


class GatewayFile(BaseModel):
    model_config = FILE_MODEL_CONFIG
    version: Version
    upstreams: Annotated[dict[Name, Upstream], Field(min_length=1)]
    routes: Annotated[list[Route], Field(min_length=1)]
    keys: list[GatewayKey] = []
    #: a tool call the model asks for that a tool policy denies: the response is refused
    #: (``refuse``; a stream ends with the SDK's error event) or the call is removed from it
    #: (``strip``; in streams too, but for the Responses API's, which are refused)
    denied_tool_calls: Literal["refuse", "strip"] = "refuse"
    #: a tool the request offers the model that a tool policy denies: the request is refused
    #: (``refuse``) or the tool is removed from the offer (``strip``)
    denied_tool_definitions: Literal["refuse", "strip"] = "strip"
    #: a named session not seen for this long is forgotten by this gateway process (its state
    #: is read again if it comes back); it is ended by the worker's idle timeout
    session_idle_s: Annotated[float, Field(gt=0, le=86400)] = 600.0

    @model_validator(mode="after")
    def _references(self) -> Self:
        for i, route in enumerate(self.routes):
            if route.upstream not in self.upstreams:
                known = ", ".join(sorted(self.upstreams))
                raise ValueError(f"routes[{i}]: unknown upstream {route.upstream!r} ({known})")
        seen: set[str] = set()
        for key in self.keys:
            if key.sha256 in seen:
                raise ValueError(f"keys: sha256 {key.sha256[:12]}... is listed twice")
            seen.add(key.sha256)
        return self


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    tenant: str
    agent: str
    agent_version: str | None


@dataclass(frozen=True)
class ResolvedUpstream:
    name: str
    spec: Upstream
    #: the provider key, read from ``spec.key_env`` when the gateway starts
    key: str


class MissingProviderKey(ValueError):
    """An upstream's ``key_env`` is not set in the gateway's environment."""


@dataclass(frozen=True)
class GatewayConfig:
    """The validated file with the provider keys read from the environment."""

    file: GatewayFile
    upstreams: Mapping[str, ResolvedUpstream]
    path: Path

    @classmethod
    def build(
        cls, file: GatewayFile, path: Path, environ: Mapping[str, str] | None = None
    ) -> GatewayConfig:
        env = os.environ if environ is None else environ
        resolved = {}
        for name, spec in file.upstreams.items():
            key = env.get(spec.key_env, "") if spec.key_env else ""
            if spec.key_env and not key:
                raise MissingProviderKey(
                    f"{path}: upstream {name!r} takes its key from ${spec.key_env}, which is not "
                    f"set: export {spec.key_env}=... before starting the gateway"
                )
            resolved[name] = ResolvedUpstream(name, spec, key)
        return cls(file, resolved, path)

    def identify(self, presented: str | None) -> Identity | None:
        """Who a presented gateway key is (None: unknown). Compared in constant time."""
        if not presented:
            return None
        digest = key_hash(presented)
        for key in self.file.keys:
            if hmac.compare_digest(key.sha256, digest):
                return Identity(key.tenant, key.agent, key.agent_version)
        return None

    def identities(self) -> list[Identity]:
        found: dict[tuple[str, str], Identity] = {}
        for key in self.file.keys:
            found.setdefault((key.tenant, key.agent), Identity(key.tenant, key.agent, None))
        return list(found.values())

    def route(self, model: str, api: Api) -> ResolvedUpstream | None:
        """The upstream serving ``model`` in ``api`` (first matching route), if any."""
        for route in self.file.routes:
            upstream = self.upstreams[route.upstream]
            if upstream.spec.api != api:
                continue
            if any(fnmatch.fnmatchcase(model, glob) for glob in route.models):
                return upstream
        return None

    def models(self, api: Api) -> list[str]:
        """The model globs routed in ``api`` (GET /v1/models)."""
        return [
            glob
            for route in self.file.routes
            if self.upstreams[route.upstream].spec.api == api
            for glob in route.models
        ]


def load_gateway(path: Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """``gateway.yaml`` at ``path`` validated (PolicyError: file:line: field: reason) with the
    provider keys read from the environment (MissingProviderKey)."""
    from streams.policy_files import PolicyError, parse_model_file

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([f"{path}:1: cannot be read: {exc}"]) from exc
    return GatewayConfig.build(parse_model_file(path, text, GatewayFile), path, environ)
