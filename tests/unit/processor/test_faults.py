"""Fault classes: what is retried and what ends the process."""

from __future__ import annotations

import redis
from confluent_kafka import KafkaError, KafkaException

from streams.processor.faults import Backoff, Fault, classify, describe, producer_fenced


def kafka(
    code: int, *, fatal: bool = False, retriable: bool = False, abort: bool = False
) -> KafkaException:
    return KafkaException(
        KafkaError(code, "test", fatal=fatal, retriable=retriable, txn_requires_abort=abort)
    )


def test_redis_and_timeouts_are_transient() -> None:
    assert classify(redis.TimeoutError("slow")) is Fault.TRANSIENT
    assert classify(redis.ConnectionError("refused")) is Fault.TRANSIENT
    assert classify(TimeoutError("decisions not acknowledged")) is Fault.TRANSIENT


def test_a_member_that_lost_its_place_is_transient() -> None:
    assert classify(kafka(KafkaError.UNKNOWN_MEMBER_ID)) is Fault.TRANSIENT
    assert classify(kafka(KafkaError.ILLEGAL_GENERATION)) is Fault.TRANSIENT
    assert classify(kafka(KafkaError._ASSIGNMENT_LOST)) is Fault.TRANSIENT
    assert classify(kafka(KafkaError.INVALID_TXN_STATE, abort=True)) is Fault.TRANSIENT
    assert classify(kafka(KafkaError.NETWORK_EXCEPTION, retriable=True)) is Fault.TRANSIENT


def test_fencing_fatal_errors_and_bugs_are_fatal() -> None:
    assert classify(kafka(KafkaError._FENCED, fatal=True)) is Fault.FATAL
    assert classify(kafka(KafkaError.PRODUCER_FENCED)) is Fault.FATAL
    assert classify(kafka(KafkaError.UNKNOWN_MEMBER_ID, fatal=True)) is Fault.FATAL
    assert classify(kafka(KafkaError.TOPIC_AUTHORIZATION_FAILED)) is Fault.FATAL
    assert classify(OverflowError("int too large")) is Fault.FATAL
    assert classify(KeyError("x")) is Fault.FATAL


def test_a_fenced_producer_is_told_apart_for_the_loops_to_take_their_id_back() -> None:
    assert producer_fenced(kafka(KafkaError._FENCED, fatal=True))
    assert producer_fenced(kafka(KafkaError.PRODUCER_FENCED))
    # what every call of a fenced producer fails with afterwards
    assert producer_fenced(kafka(KafkaError._FATAL, fatal=True))
    assert not producer_fenced(kafka(KafkaError.UNKNOWN_MEMBER_ID, fatal=True))
    assert not producer_fenced(kafka(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert not producer_fenced(TimeoutError("slow"))


def test_describe_is_one_line_with_the_kafka_error_name() -> None:
    assert describe(kafka(KafkaError.UNKNOWN_MEMBER_ID)).startswith("KafkaError UNKNOWN_MEMBER_ID")
    assert "\n" not in describe(ValueError("a\nb"))


def test_backoff_doubles_up_to_its_bound_and_resets() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_redis_replies_that_say_the_command_is_wrong_are_fatal() -> None:
    assert classify(redis.ResponseError("WRONGTYPE Operation against a key")) is Fault.FATAL
    assert classify(redis.ResponseError("LOADING Redis is loading")) is Fault.TRANSIENT
    assert classify(redis.ResponseError("OOM command not allowed")) is Fault.TRANSIENT


def test_a_full_producer_queue_is_transient() -> None:
    assert classify(BufferError("Local: Queue full")) is Fault.TRANSIENT
