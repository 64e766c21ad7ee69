"""The one error wrapper of the CLI: expected failures become one line naming the fix.

Every command registered through :class:`streams.cli.base.GovernorTyper` runs inside
:func:`guarded`. Redis or Kafka unreachable, an unknown id, a bad argument, a read the worker's
tokens refuse, a light install running a worker's command: ``error: <what> — <the fix>`` on
stderr and exit code 1, never a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click
import typer

F = TypeVar("F", bound=Callable[..., Any])

#: top-level modules of the extras, and the install line that brings each (the base install is
#: the light agent client: `pip install fleet-governor`)
EXTRA_OF_MODULE = {
    **dict.fromkeys(
        ("faust", "mode", "aiokafka", "aiohttp", "prometheus_client", "uvloop", "google"),
        "worker",
    ),
    **dict.fromkeys(("presidio_analyzer", "presidio_anonymizer", "spacy"), "pii"),
    "opentelemetry": "otel",
    "langchain_core": "langchain",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The install line for a module an extra brings, or None when it is not one of ours."""
    extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
    return f"pip install 'fleet-governor[{extra}]'" if extra else None


def _where() -> tuple[str, str]:
    """(Kafka bootstrap, Redis URL without its password) of this shell's settings."""
    from streams.settings import Settings

    try:
        s = Settings.from_env()
    except ValueError:
        return "GOVERNOR_BOOTSTRAP", "GOVERNOR_REDIS_URL"
    return s.bootstrap, s.redis_url_display


def _first_line(exc: BaseException) -> str:
    """The class and the first line of the message (the Kafka error's name and text)."""
    from confluent_kafka import KafkaError

    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    if error is not None:
        return f"{error.name()}: {error.str()}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def expected_failure(exc: BaseException) -> str | None:
    """The one line an expected failure is reported as, or None for a bug (keep the traceback).

    Pure but for reading the settings to name the addresses; tested for each kind."""
    import redis
    from confluent_kafka import KafkaException

    from streams.worker import ApiAuthError

    kafka, redis_url = _where()
    if isinstance(exc, redis.RedisError):
        return (
            f"Redis at {redis_url} cannot be reached ({_first_line(exc)}); start it "
            "(governor up) or point GOVERNOR_REDIS_URL at it"
        )
    if isinstance(exc, KafkaException):
        return _kafka_line(exc, kafka)
    if isinstance(exc, ApiAuthError):
        return str(exc)
    if isinstance(exc, ModuleNotFoundError):
        fix = missing_extra(exc)
        return None if fix is None else f"this command needs {exc.name}, not installed: {fix}"
    if isinstance(exc, LookupError) and not isinstance(exc, KeyError | IndexError):
        # an unknown session, incident, version ... (a KeyError is a bug: keep its traceback)
        message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        return f"not found: {message}"
    if isinstance(exc, ValueError):  # a bad argument the domain refused (with its reason)
        return f"{exc}; see --help"
    return None


#: librdkafka's codes for "nothing answers there" (else the broker answered, and refused)
UNREACHABLE = {"_TRANSPORT", "_TIMED_OUT", "_ALL_BROKERS_DOWN", "_RESOLVE", "_MSG_TIMED_OUT"}


def _kafka_line(exc: BaseException, bootstrap: str) -> str:
    """Unreachable: start it or point at it; refused for lack of rights: the ACLs; else the
    broker's own error."""
    from confluent_kafka import KafkaError

    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    name = error.name() if error is not None else ""
    if error is None or name in UNREACHABLE:
        return (
            f"Kafka at {bootstrap} cannot be reached ({_first_line(exc)}); start it "
            "(governor up) or point GOVERNOR_BOOTSTRAP at it"
        )
    if "AUTHORIZATION" in name:
        return (
            f"Kafka at {bootstrap} refused ({_first_line(exc)}): this principal lacks an ACL; "
            "governor topics acls prints the ones each role needs"
        )
    return f"Kafka at {bootstrap} refused: {_first_line(exc)}"


def guarded(f: F) -> F:
    """``f`` with expected failures turned into one line and exit code 1."""

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:
            line = expected_failure(exc)
            if line is None:
                raise
            from streams.cli.base import fail

            raise fail(_markup_safe(line)) from None

    return run  # type: ignore[return-value]


def _markup_safe(line: str) -> str:
    from rich.markup import escape

    return escape(line)
