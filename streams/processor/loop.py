"""The transactional stage loop both worker stages run on (consume, process, checkpoint).

A stage consumes its source topic in batches with confluent-kafka (its own consumer group),
changes in-memory state, and every ``checkpoint_interval_s`` writes its dirty state to its
compacted changelog, its outputs, and the consumed offsets in ONE Kafka transaction (EOS v2,
``send_offsets_to_transaction``). A crash replays from the last transaction: state, outputs and
offsets move together.

Faults (:mod:`streams.processor.faults`): a transient fault aborts the open transaction, rewinds
the consumer to the committed offsets, restores the owned partitions' state from the changelog
and retries with backoff; anything else ends the process non-zero. Side effects of a batch that
are not Kafka writes (metrics) take effect when its transaction commits, so a retried batch
counts once.

Rebalancing: newly assigned partitions are paused and restored from the changelog in the main
loop (not inside librdkafka's callback, which must return promptly), then resumed; a revoke
checkpoints what is ours (or aborts), so a partition moves with everything it had committed.

A stage subclasses :class:`TransactionalLoop` and implements the hooks at the bottom.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streams.kafka_config import client_config
from streams.processor.faults import Backoff, Fault, classify, describe, fatal, producer_fenced
from streams.settings import Settings
from streams.topics import Record, scan_partitions
from streams.workers import INSTANCE_ID, worker_client_id

log = logging.getLogger("governor.loop")

BATCH_MAX = 5000
#: how long ``consume`` waits for a batch of BATCH_MAX: it returns only when the batch is full
#: or this is up, so it is a floor on how soon an event reaches the engine (issue 18: the
#: KILL path); at 5 ms an idle loop comes round 200 times a second, which costs ~nothing
POLL_TIMEOUT_S = 0.005
TICK_INTERVAL_S = 1.0
PRODUCE_STALL_S = 30.0
#: a crashed worker's open transaction holds back read_committed readers of its outputs (the
#: scope stage, the read-model) until the coordinator aborts it: this long, plus the broker's
#: transaction.abort.timed.out.transaction.cleanup.interval.ms (1 s on the local stack, 10 s
#: by default), and a new owner's restore of its state waits for that too. Kafka Streams'
#: exactly-once default: a transaction here lasts one checkpoint interval, and one that
#: outlives it (the process was paused) is aborted and its producer fenced, which the loop
#: recovers from with a new producer (``_renew_producer``)
TRANSACTION_TIMEOUT_MS = 10_000
#: producers a loop renews without a commit in between before it gives up (fatal)
MAX_RENEWALS = 3
#: the loop's states, as /healthz and /readyz report them
STARTING, RESTORING, RUNNING, RECOVERING, STOPPED = (
    "starting",
    "restoring",
    "running",
    "recovering",
    "stopped",
)


class TransactionalLoop:
    """Supervised consume → process → checkpoint loop of one stage, on its own thread."""

    #: the stage's name in thread names, logs and metrics
    stage = "stage"

    def __init__(
        self,
        settings: Settings,
        source_topic: str,
        group_id: str,
        changelog: str,
        checkpoint_interval_s: float | None = None,
    ) -> None:
        self.settings = settings
        #: held while the state changes; web views take it to read consistent state
        self.lock = threading.RLock()
        self.processed = 0
        #: wall time of the first and latest batch, for throughput measurements
        self.first_batch_at = 0.0
        self.last_batch_at = 0.0
        self.ready = threading.Event()
        self.error: BaseException | None = None
        #: what the loop is doing (STARTING ... STOPPED), the last transient fault it recovered
        #: from, and when it last came round (monotonic): /healthz and /readyz read these
        self.loop_state = STARTING
        self.loop_heartbeat = time.monotonic()
        self.last_fault = ""
        self.recoveries = 0
        #: assigned partitions whose state is restored (readiness)
        self.assigned: set[int] = set()
        self.checkpoint_interval_s = (
            checkpoint_interval_s
            if checkpoint_interval_s is not None
            else settings.checkpoint_interval_s
        )
        self._source_topic = source_topic
        self._changelog = changelog
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"governor-{self.stage}", daemon=True
        )
        self._in_txn = False
        #: records consumed since the last commit (nothing new: no empty transactions)
        self._consumed = False
        #: the open transaction's side effects: metrics to count and calls to forget when it
        #: commits; on abort the metrics are dropped and the calls run again
        self._on_commit: list[Callable[[], None]] = []
        self._calls_in_txn: list[Callable[[], None]] = []
        #: work other threads hand to the loop's thread (it owns the transactional producer)
        self._calls: list[Callable[[], None]] = []
        #: set by a rebalance callback whose checkpoint failed: rewind before the next batch
        self._rewind_needed = False
        #: producers renewed since the last commit (see _renew_producer)
        self._renewals = 0
        self._callback_error: BaseException | None = None
        #: assigned partitions paused until the main loop has restored them
        self._to_restore: list[TopicPartition] = []
        self.consumer = Consumer(
            {
                **client_config(settings),
                "group.id": group_id,
                "client.id": worker_client_id(settings),
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                # a worker that dies without leaving hands its partitions over within ~10 s
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 2_000,
                "fetch.wait.max.ms": 20,
                "queued.max.messages.kbytes": 65536,
                "log_level": 3,
            }
        )
        self.producer = self._new_producer()

    def _new_producer(self) -> Producer:
        return Producer(
            {
                **client_config(self.settings),
                # one id per process and stage (KIP-447): fencing a zombie is the group
                # generation's job (send_offsets_to_transaction), so any number of workers run
                # side by side; a dead instance's open transaction is aborted by the
                # coordinator after transaction.timeout.ms, which is kept short for that reason
                "transactional.id": f"{self.settings.app_id}-{self.stage}-{INSTANCE_ID}",
                "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
                "log_level": 3,
            }
        )

    def _renew_producer(self, exc: BaseException) -> None:
        """Our transaction outlived its timeout (a pause) and the coordinator fenced the
        producer: a new one takes the id back; what the aborted transaction held is redone
        from the last commit (the rewind that follows). A producer renewed this many times
        without a commit in between has another problem: that is fatal."""
        self._renewals += 1
        if self._renewals > MAX_RENEWALS:
            self.error = exc
            fatal(f"the {self.stage} loop (its producer failed {self._renewals} times)", exc)
        log.warning(
            "%s: the producer was fenced (%s): the open transaction outlived its %d s timeout "
            "(a pause?); taking the transactional id back with a new producer",
            self.stage,
            describe(exc),
            TRANSACTION_TIMEOUT_MS // 1000,
        )
        self._in_txn = False
        self._forget_txn()
        with contextlib.suppress(KafkaException):  # a fatal producer may refuse even this
            self.producer.purge(in_queue=True, in_flight=True)
        self.producer = self._new_producer()
        self.producer.init_transactions(30)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._prepare()
        self.producer.init_transactions(30)
        self.consumer.subscribe(
            [self._source_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the loop's thread, which owns the transactional producer and the
        stage's state (other threads must not write either)."""
        self._calls.append(call)

    def _run(self) -> None:
        """Supervise the loop: recover from transient faults, end the process on the rest."""
        backoff = Backoff(self.settings.retry_backoff_s, self.settings.retry_backoff_max_s)
        try:
            while not self._stopping.is_set():
                try:
                    self._loop(backoff)
                except BaseException as exc:
                    if self._stopping.is_set():
                        raise
                    self._triage(exc, f"the {self.stage} loop")
                    self._recover(exc, backoff)
            self.checkpoint()
        except BaseException as exc:  # on the way out: a stop that could not checkpoint
            self.error = exc
            log.warning("%s loop stopped without a last checkpoint: %s", self.stage, describe(exc))
        finally:
            self.loop_state = STOPPED
            # leaving the group at once hands the partitions over now, not after the timeout
            self.consumer.close()

    def _loop(self, backoff: Backoff) -> None:
        last_checkpoint = last_tick = time.monotonic()
        self.loop_state = RUNNING
        while not self._stopping.is_set():
            while self._calls:
                call = self._calls.pop(0)
                self._calls_in_txn.append(call)
                with self.lock:
                    call()
            messages = self.consumer.consume(BATCH_MAX, POLL_TIMEOUT_S)
            self._raise_callback_error()
            if self._rewind_needed:
                self._rewind()
                continue
            if self._to_restore:
                self._restore_assigned()
            if messages:
                # a rebalance inside consume() may have taken partitions whose records came
                # with the batch: they are the new owner's now, and their state is gone here
                owned = self.assigned
                messages = [m for m in messages if m.partition() in owned and self._usable(m)]
            if messages:
                self._handle(messages)
                self.processed += len(messages)
                self._consumed = True
                self.last_batch_at = time.time()
                if not self.first_batch_at:
                    self.first_batch_at = self.last_batch_at
            now = time.monotonic()
            self.loop_heartbeat = now
            self._heartbeat()
            if now - last_tick >= TICK_INTERVAL_S:
                last_tick = now
                self._tick()
            if now - last_checkpoint >= self.checkpoint_interval_s or self._checkpoint_due():
                last_checkpoint = now
                self.checkpoint()
                backoff.reset()
                self.loop_state = RUNNING

    @staticmethod
    def _usable(msg: Message) -> bool:
        """A record, not an error event (an unexpected one is logged; librdkafka retries)."""
        error = msg.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error: %s", error)
        return False

    def _raise_callback_error(self) -> None:
        error, self._callback_error = self._callback_error, None
        if error is not None:
            raise error

    def _recover(self, exc: BaseException, backoff: Backoff) -> None:
        """Abort, rewind to the committed offsets, restore, back off; retried until it works."""
        self.loop_state = RECOVERING
        self.recoveries += 1
        self.last_fault = describe(exc)
        self._count_recovery(exc)
        while not self._stopping.is_set():
            delay = backoff.next_delay()
            log.warning(
                "%s: transient fault (%s): transaction aborted, rewinding to the committed "
                "offsets and restoring state; next attempt in %.1fs",
                self.stage,
                self.last_fault,
                delay,
            )
            self._stopping.wait(delay)
            self.loop_heartbeat = time.monotonic()
            try:
                self._rewind()
                return
            except BaseException as again:
                self._triage(again, f"the {self.stage} loop's recovery")
                self.last_fault = describe(again)

    def _triage(self, exc: BaseException, where: str) -> None:
        """A fenced producer is renewed, a transient fault is retried (by the caller); the
        rest ends the process."""
        if producer_fenced(exc):
            self._renew_producer(exc)
        elif classify(exc) is not Fault.TRANSIENT:
            self.error = exc
            fatal(where, exc)

    def _rewind(self) -> None:
        """Undo everything since the last commit: abort the transaction, restore the owned
        partitions' state from the changelog, seek to the committed offsets."""
        self._rewind_needed = False
        self._abort()
        assignment = self.consumer.assignment()
        numbers = sorted(tp.partition for tp in assignment)
        self._to_restore = []
        with self.lock:
            self._forget_all()
        self._restore(numbers)
        committed = self.consumer.committed(assignment, timeout=30) if assignment else []
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        if assignment:
            self.consumer.resume(assignment)
        self.assigned = set(numbers)
        log.info("%s: rewound partitions %s to their committed offsets", self.stage, numbers)

    def _abort(self) -> None:
        """Abort the open transaction; its metrics are dropped and its calls queued again."""
        if self._in_txn:
            self.producer.abort_transaction(30)
            self._in_txn = False
        self._forget_txn()

    def _forget_txn(self) -> None:
        """Drop what an aborted transaction held: its metrics, and queue its calls again."""
        self._on_commit.clear()
        self._calls[:0] = self._calls_in_txn
        self._calls_in_txn = []
        self._aborted()

    # --- transactions --------------------------------------------------------------------

    def _txn_produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if not self._in_txn:
            self.producer.begin_transaction()
            self._in_txn = True
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        deadline = time.monotonic() + PRODUCE_STALL_S
        while True:
            try:
                self.producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                # the broker takes nothing: a transient fault once it has lasted this long
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"producer queue full for {PRODUCE_STALL_S:.0f}s writing {topic}"
                    ) from None
                self.producer.poll(0.05)

    def checkpoint(self) -> None:
        """Write dirty state, then commit it with the consumed offsets in one transaction."""
        with self.lock:
            self._write_state()
        if not self._in_txn and not self._consumed:
            return
        assignment = self.consumer.assignment()
        positions = [tp for tp in self.consumer.position(assignment) if tp.offset >= 0]
        if not self._in_txn and not positions:
            return
        if not self._in_txn:
            self.producer.begin_transaction()
            self._in_txn = True
        if positions:
            self.producer.send_offsets_to_transaction(
                positions, self.consumer.consumer_group_metadata(), 30
            )
        self.producer.commit_transaction(60)
        self._renewals = 0
        self._in_txn = False
        self._consumed = False
        self._calls_in_txn = []
        counts, self._on_commit = self._on_commit, []
        for count in counts:
            count()
        self._committed()

    # --- rebalancing ---------------------------------------------------------------------
    # librdkafka calls these from inside consume(); an error is kept and raised after it
    # returns, where the loop's fault handling sees it

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            # nothing of a partition is read before its state is back: paused until the main
            # loop has restored it (a restore may take seconds; the callback must not)
            if not partitions:  # a member beyond the partition count: nothing to restore
                self.loop_state = RUNNING
                self.ready.set()
                return
            consumer.pause(partitions)
            self._to_restore.extend(partitions)
            self.loop_state = RESTORING
        except BaseException as exc:
            self._callback_error = exc

    def _restore_assigned(self) -> None:
        # what is done is committed first: a restore can wait for a dead worker's transaction
        # longer than our own open one may live
        self.checkpoint()
        partitions, self._to_restore = self._to_restore, []
        started = time.monotonic()
        numbers = sorted(tp.partition for tp in partitions)
        self._restore(numbers)
        self.assigned |= set(numbers)
        self.consumer.resume(partitions)
        log.info(
            "%s: assigned partitions %s: state restored in %.2fs",
            self.stage,
            numbers,
            time.monotonic() - started,
        )
        self.loop_state = RUNNING
        self.ready.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions}
        self._to_restore = [tp for tp in self._to_restore if tp.partition not in revoked]
        try:
            self.checkpoint()
        except BaseException as exc:
            # the transaction spans every partition: abort it, and rewind what stays ours
            log.warning("%s: checkpoint on revoke failed (%s): aborting", self.stage, describe(exc))
            try:
                self._abort()
            except BaseException as abort_error:
                self._callback_error = abort_error
            self._rewind_needed = True
        self._drop_partitions(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The group went on without us (a pause past the session timeout): nothing of the
        open transaction may be committed, and the partitions are someone else's now."""
        log.warning(
            "%s: partitions %s lost to the group (paused past the session timeout?): aborting "
            "the open transaction and rejoining",
            self.stage,
            sorted(tp.partition for tp in partitions),
        )
        lost = {tp.partition for tp in partitions}
        self._to_restore = [tp for tp in self._to_restore if tp.partition not in lost]
        try:
            self._abort()
        except BaseException as exc:
            self._callback_error = exc
        self._rewind_needed = True
        self._drop_partitions(partitions)

    def _drop_partitions(self, partitions: list[TopicPartition]) -> None:
        with self.lock:
            for tp in partitions:
                self._forget(tp.partition)
                self.assigned.discard(tp.partition)

    def _scan_changelog(self, numbers: list[int], apply: Callable[[int, Record], None]) -> None:
        """Stream the changelog of ``numbers`` into ``apply`` (nothing held twice)."""
        scan_partitions(
            self.settings, self._changelog, numbers, apply, until_stable=True, progress=self._alive
        )

    def _alive(self) -> None:
        self.loop_heartbeat = time.monotonic()

    # --- hooks ---------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Before the first transaction: create the topics the stage writes."""

    def _handle(self, messages: list[Message]) -> None:
        raise NotImplementedError

    def _tick(self) -> None:
        """Once a second: time-driven work."""

    def _heartbeat(self) -> None:
        """After every poll."""

    def _checkpoint_due(self) -> bool:
        """True to commit before the interval is up (latency-sensitive output waiting)."""
        return False

    def _write_state(self) -> None:
        """Inside the checkpoint, under the lock: write the dirty state to the transaction."""

    def _committed(self) -> None:
        """After a commit."""

    def _aborted(self) -> None:
        """After an abort: forget what the aborted transaction would have written."""

    def _restore(self, numbers: list[int]) -> None:
        """Rebuild and install the state of these partitions from the changelog."""

    def _forget(self, partition: int) -> None:
        """A partition is no longer ours."""

    def _forget_all(self) -> None:
        """Every partition is restored again (a rewind)."""

    def _count_recovery(self, exc: BaseException) -> None:
        """A metric for a transient fault recovered from."""
