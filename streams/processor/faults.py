"""Fault classes: every exception a loop meets is a bad record, transient or fatal.

- *Bad record*: handled where it is met (validation, decoding): dead-lettered with a reason.
- *Transient*: Redis unreachable or slow, Kafka errors the broker or client marks retriable or
  abortable, a group member fenced or expired after a long pause, a rebalance mid-transaction.
  The loop aborts what it had begun, rewinds to what was committed, backs off and retries.
- *Fatal*: anything else. :func:`fatal` logs one line with the cause and ends the process with
  a non-zero status, so a supervisor (systemd, Kubernetes, a Docker restart policy) restarts it:
  a live process with a dead loop is the one outcome that is never acceptable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import NoReturn

import redis
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from aiokafka.errors import KafkaError as AioKafkaError
from confluent_kafka import KafkaError, KafkaException

log = logging.getLogger("governor.faults")

#: exit status of a worker that stopped on a fatal fault (EX_SOFTWARE)
FATAL_EXIT_STATUS = 70


class Fault(StrEnum):
    TRANSIENT = "transient"
    FATAL = "fatal"


#: Kafka error codes that mean "this member lost its place; rejoin and redo from the commit"
_MEMBER_LOST = {
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError._ASSIGNMENT_LOST,
    KafkaError._STATE,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.CONCURRENT_TRANSACTIONS,
    KafkaError._TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.TRANSACTION_COORDINATOR_FENCED,
}


def kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


#: a transactional producer's "a newer epoch holds your id"
_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED}


def producer_fenced(exc: BaseException) -> bool:
    """Whether a transactional producer was fenced, or is in the fatal state fencing leaves
    it in (every later call fails with ``_FATAL``). Each loop's transactional id is its own
    process's (``workers.INSTANCE_ID``), so nobody else can hold it: the coordinator aborted
    a transaction that outlived ``transaction.timeout.ms`` (the process was paused) and
    bumped the epoch. The loop takes its id back with a new producer (as Kafka Streams
    resets its producer) and redoes the work from the last commit; a new producer that fails
    again is a fatal fault (see ``TransactionalLoop._renew_producer``)."""
    error = kafka_error(exc)
    return error is not None and (error.code() in _FENCED or error.code() == KafkaError._FATAL)


#: Redis error replies that mean "not now" (an outage to wait out); any other reply says the
#: command itself is wrong (WRONGTYPE, a script error): a bug that retrying cannot mend
_REDIS_UNAVAILABLE = ("OOM", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY",
                      "LOADING", "NOSCRIPT")  # fmt: skip


def classify(exc: BaseException) -> Fault:
    """Transient or fatal (bad records never reach here: they are handled where they are met)."""
    if isinstance(exc, redis.ResponseError) and not isinstance(exc, redis.exceptions.NoScriptError):
        word = (str(exc).split() or [""])[0].upper()
        return Fault.TRANSIENT if word in _REDIS_UNAVAILABLE else Fault.FATAL
    if isinstance(exc, redis.RedisError | ConnectionError | TimeoutError):
        return Fault.TRANSIENT
    if isinstance(exc, AioKafkaError):
        # aiokafka marks its timeouts not retriable (for its own retry loop); here a broker
        # that does not answer in time is the outage to wait out
        transient = exc.retriable or isinstance(exc, KafkaTimeoutError | KafkaConnectionError)
        return Fault.TRANSIENT if transient else Fault.FATAL
    if isinstance(exc, BufferError):
        # a producer's queue is full: the broker is away, and the queue drains when it is back
        return Fault.TRANSIENT
    error = kafka_error(exc)
    if error is not None:
        # a fenced producer is fatal here; the transactional loops, whose ids are their own,
        # take theirs back (producer_fenced)
        if error.code() in _FENCED or error.fatal():
            return Fault.FATAL
        if error.retriable() or error.txn_requires_abort() or error.code() in _MEMBER_LOST:
            return Fault.TRANSIENT
    return Fault.FATAL


def describe(exc: BaseException) -> str:
    """One line: the class, and the Kafka error name when there is one."""
    error = kafka_error(exc)
    if error is not None:
        return f"KafkaError {error.name()}: {error.str()}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@dataclass
class Backoff:
    """Exponential backoff between retries, reset by the first success."""

    first_s: float = 0.5
    max_s: float = 10.0
    attempt: int = 0

    def next_delay(self) -> float:
        delay: float = min(self.max_s, self.first_s * 2.0**self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


_fatal_lock = threading.Lock()


def fatal(component: str, exc: BaseException) -> NoReturn:
    """Log one clear line (and the traceback after it) and end the process at once.

    ``os._exit`` on purpose: a graceful stop can hang on the very thing that failed, and an
    open transaction is aborted by the broker when the restarted worker registers again.
    """
    with _fatal_lock:
        log.critical(
            "FATAL in %s: %s — exiting with status %d so the supervisor restarts the worker",
            component,
            describe(exc),
            FATAL_EXIT_STATUS,
        )
        log.debug("fatal fault in %s", component, exc_info=exc)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):  # the process ends next either way
                handler.flush()
        sys.stderr.flush()
        time.sleep(0.05)
        os._exit(FATAL_EXIT_STATUS)
