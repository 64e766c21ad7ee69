"""Kafka client configuration in one place: every client Governor creates connects through here.

``GOVERNOR_KAFKA_*`` settings (security protocol, SASL mechanism and credentials, CA, client
certificate and key, or a librdkafka properties file) become

- :func:`client_config`: the librdkafka dict for confluent-kafka producers, consumers and admin
  clients (``bootstrap.servers`` plus the security properties, then the caller's own);
- :func:`aiokafka_kwargs`: keyword arguments for aiokafka clients (``ssl_context`` and friends);
- :func:`faust_credentials`: the worker's ``broker_credentials`` for Faust (aiokafka inside).

Precedence: a librdkafka properties file (``GOVERNOR_KAFKA_PROPERTIES_FILE``, ``key=value``
lines, ``#`` comments) is read first; the typed ``GOVERNOR_KAFKA_*`` settings win over its
``security.protocol``, ``sasl.*`` and ``ssl.*`` lines. Every line of the file also goes to
librdkafka as it is (so any librdkafka property can be set there); aiokafka and Faust take the
typed view only.

Secrets (the SASL password, the key password, and properties whose name says password, secret
or token) never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the settings import this module lazily: no cycle at run time
    from streams.settings import Settings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

#: librdkafka properties read into the typed view (and the setting that overrides each)
_TYPED_PROPERTIES = {
    "security.protocol": "kafka_security_protocol",
    "sasl.mechanism": "kafka_sasl_mechanism",
    "sasl.mechanisms": "kafka_sasl_mechanism",
    "sasl.username": "kafka_username",
    "sasl.password": "kafka_password",
    "ssl.ca.location": "kafka_ca_file",
    "ssl.certificate.location": "kafka_cert_file",
    "ssl.key.location": "kafka_key_file",
    "ssl.key.password": "kafka_key_password",
}
_SECRET_WORDS = ("password", "secret", "token", "jaas")


class KafkaConfigError(ValueError):
    """A Kafka security setting is wrong; the message names the setting and the fix."""


def is_secret(key: str) -> bool:
    return any(word in key.lower() for word in _SECRET_WORDS)


def _env(name: str) -> str:
    return "GOVERNOR_" + name.upper()


@dataclass(frozen=True)
class KafkaSecurity:
    """How Governor's Kafka clients authenticate and encrypt (validated; secrets hidden)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: str = field(default="", repr=False)
    #: every line of the properties file, for librdkafka (secrets among them: not in repr)
    properties: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def describe(self) -> str:
        """One line for logs and `governor` output: no secret in it."""
        parts = [self.protocol]
        if self.uses_sasl:
            parts.append(f"{self.sasl_mechanism} as {self.username!r}")
        if self.ca_file is not None:
            parts.append(f"CA {self.ca_file}")
        if self.cert_file is not None:
            parts.append(f"client certificate {self.cert_file}")
        return ", ".join(parts)

    def librdkafka(self) -> dict[str, str]:
        """The security properties for confluent-kafka (the properties file's lines first)."""
        props = dict(self.properties)
        props["security.protocol"] = self.protocol
        props.pop("sasl.mechanisms", None)
        if self.uses_sasl:
            props["sasl.mechanism"] = self.sasl_mechanism
            props["sasl.username"] = self.username
            props["sasl.password"] = self.password
        for key, path in (
            ("ssl.ca.location", self.ca_file),
            ("ssl.certificate.location", self.cert_file),
            ("ssl.key.location", self.key_file),
        ):
            if path is not None:
                props[key] = str(path)
        if self.key_password:
            props["ssl.key.password"] = self.key_password
        return props


def read_properties(path: Path) -> list[tuple[str, str]]:
    """``key=value`` lines of a librdkafka/Java properties file (``#``/``!`` comments)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise KafkaConfigError(
            f"GOVERNOR_KAFKA_PROPERTIES_FILE={path}: cannot be read ({exc.strerror}); "
            "point it at a readable file of key=value lines, or unset it"
        ) from exc
    lines: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            # the line may hold a secret: name its number, never its text
            raise KafkaConfigError(
                f"GOVERNOR_KAFKA_PROPERTIES_FILE={path}, line {number}: expected key=value"
            )
        lines.append((key.strip(), value.strip()))
    return lines


def security_from_settings(settings: Settings) -> KafkaSecurity:
    """The validated security view of ``settings``; :class:`KafkaConfigError` names what is
    wrong (an unknown protocol or mechanism, SASL without credentials, a missing file)."""
    properties: list[tuple[str, str]] = []
    if settings.kafka_properties_file is not None:
        properties = read_properties(settings.kafka_properties_file)
    from_file = {key: value for key, value in properties}

    def pick(setting: str) -> str:
        value = getattr(settings, setting)
        if value not in (None, ""):
            return str(value)
        for prop, name in _TYPED_PROPERTIES.items():
            if name == setting and from_file.get(prop):
                return from_file[prop]
        return ""

    protocol = (pick("kafka_security_protocol") or "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise KafkaConfigError(
            f"{_env('kafka_security_protocol')}={protocol!r} is not a Kafka security protocol; "
            f"use one of {', '.join(PROTOCOLS)}"
        )
    mechanism = pick("kafka_sasl_mechanism").upper()
    username, password = pick("kafka_username"), pick("kafka_password")
    if protocol.startswith("SASL_"):
        mechanism = mechanism or "SCRAM-SHA-512"
        if mechanism not in MECHANISMS:
            raise KafkaConfigError(
                f"{_env('kafka_sasl_mechanism')}={mechanism!r} is not supported; use one of "
                f"{', '.join(MECHANISMS)}"
            )
        if not username or not password:
            raise KafkaConfigError(
                f"{_env('kafka_security_protocol')}={protocol} needs credentials: set "
                f"{_env('kafka_username')} and {_env('kafka_password')} (or sasl.username and "
                "sasl.password in GOVERNOR_KAFKA_PROPERTIES_FILE)"
            )
    elif mechanism:
        raise KafkaConfigError(
            f"{_env('kafka_sasl_mechanism')}={mechanism} needs a SASL protocol: set "
            f"{_env('kafka_security_protocol')}=SASL_SSL (or SASL_PLAINTEXT), or unset it"
        )
    files: dict[str, Path | None] = {}
    for setting in ("kafka_ca_file", "kafka_cert_file", "kafka_key_file"):
        raw = pick(setting)
        path = Path(raw).expanduser() if raw else None
        if path is not None and not path.is_file():
            raise KafkaConfigError(
                f"{_env(setting)}={path}: no such file; point it at the PEM file (or unset it)"
            )
        files[setting] = path
    if (files["kafka_cert_file"] is None) != (files["kafka_key_file"] is None):
        raise KafkaConfigError(
            f"a client certificate needs both {_env('kafka_cert_file')} and "
            f"{_env('kafka_key_file')}; set the missing one"
        )
    if not protocol.endswith("SSL") and any(files.values()):
        raise KafkaConfigError(
            f"{_env('kafka_ca_file')}/{_env('kafka_cert_file')}/{_env('kafka_key_file')} are "
            f"for TLS, but {_env('kafka_security_protocol')}={protocol}: set it to SSL or "
            "SASL_SSL"
        )
    return KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=mechanism if protocol.startswith("SASL_") else "",
        username=username,
        password=password,
        ca_file=files["kafka_ca_file"],
        cert_file=files["kafka_cert_file"],
        key_file=files["kafka_key_file"],
        key_password=pick("kafka_key_password"),
        properties=tuple(properties),
    )


#: librdkafka's own log lines (``%3|...|FAIL|...``) go through Python logging, in the process's
#: format, instead of straight to stderr: a CLI command that turns a failure into its one
#: error line silences them (streams/cli/base.py)
LIBRDKAFKA_LOG = logging.getLogger("governor.librdkafka")


def client_config(
    settings: Settings, overrides: Mapping[str, Any] | None = None, *, bootstrap: str | None = None
) -> dict[str, Any]:
    """The librdkafka configuration of a Governor client: ``bootstrap.servers`` (the settings'
    or ``bootstrap``), its log through :data:`LIBRDKAFKA_LOG`, the security properties, then
    ``overrides`` (group.id, acks, ...)."""
    return {
        "bootstrap.servers": bootstrap or settings.bootstrap,
        "logger": LIBRDKAFKA_LOG,
        **security_from_settings(settings).librdkafka(),
        **(overrides or {}),
    }


def connection_config(
    bootstrap: str, security: KafkaSecurity | None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Like :func:`client_config` for code that holds a bootstrap and a security view rather
    than Settings (the client's classes)."""
    return {
        "bootstrap.servers": bootstrap,
        "logger": LIBRDKAFKA_LOG,
        **(security or KafkaSecurity()).librdkafka(),
        **(overrides or {}),
    }


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext:
    """A verifying TLS context from the CA (system CAs without one) and the client cert."""
    ca = str(security.ca_file) if security.ca_file is not None else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if security.cert_file is not None and security.key_file is not None:
        context.load_cert_chain(
            str(security.cert_file), str(security.key_file), security.key_password or None
        )
    return context


def aiokafka_kwargs(settings: Settings, *, bootstrap: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaConsumer``/``AIOKafkaProducer``."""
    security = security_from_settings(settings)
    kwargs: dict[str, Any] = {
        "bootstrap_servers": bootstrap or settings.bootstrap,
        "security_protocol": security.protocol,
    }
    if security.uses_ssl:
        kwargs["ssl_context"] = ssl_context(security)
    if security.uses_sasl:
        kwargs["sasl_mechanism"] = security.sasl_mechanism
        kwargs["sasl_plain_username"] = security.username
        kwargs["sasl_plain_password"] = security.password
    return kwargs


def faust_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` (None for PLAINTEXT). Faust is the worker's extra, so it
    is imported only here."""
    security = security_from_settings(settings)
    if security.protocol == "PLAINTEXT":
        return None
    from faust import SASLCredentials, SSLCredentials

    context = ssl_context(security) if security.uses_ssl else None
    if security.uses_sasl:
        return SASLCredentials(
            username=security.username,
            password=security.password,
            ssl_context=context,
            mechanism=security.sasl_mechanism,
        )
    return SSLCredentials(context)
