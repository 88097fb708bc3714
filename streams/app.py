"""The Faust app: one agent runs the core over the input topic; effects go to Kafka topics; Redis follows.

Composition root: :func:`create_app` builds everything from :class:`Settings` (no import-time globals).

- Input (``fatigue.events.v1``, keyed by customer_id) carries raw bytes; we decode them ourselves so a bad message
  goes to the dead-letter topic with its reason instead of killing the agent.
- Per-customer state is a Faust table on RocksDB (rocksdict) with a changelog, co-partitioned with the input.
- Decisions go to the compacted ``fatigue.blocks.v1`` keyed ``{channel}:{customer_id}``; a consumer of its own
  (:class:`streams.redis_view.ViewConsumer`, group ``{app_id}.redis-view``) materialises that topic and the
  preferences topic into Redis, so a Redis outage only delays Redis and never the guard.
- Input reaches the agent through Faust's consumer with an offset gate (:mod:`streams.input_gate`): each input
  partition's records arrive in sequence, once, and a stale fetch is re-fetched instead of skipped.
- Input is handled in batches; the outputs of a batch go straight to the producer in processing order and are
  delivered before the batch is acknowledged (so before its offsets can be committed): at-least-once, with
  idempotent effects (the core drops redelivered event ids).
- A batch's changed states are stored only after its outputs were delivered, so after a crash a stored state is
  never ahead of the topics and the redelivered input sends again what the crash cut off. Where a state is stored
  first anyway (a delivery a stop or rebalance cut short, an erasure), indexing a partition finds the customers
  changed at or after the committed offset (every state write carries the offset of the input being handled) and
  re-sends what their state says the topics hold: the latest decision or a tombstone per channel, the preferences
  view or a tombstone.
- Unread deadlines of quiet customers fire by partition event time (:class:`fatigue.clock.PartitionClock`); when
  a partition goes quiet, a tick message routed through the same partition lets wall clock take over, and the
  same tick tombstones expired blocks, all inside the agent so they are ordered with the partition's decisions.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import logging
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
import orjson
import redis.asyncio as aioredis
from faust.streams import _current_event
from faust.types import TP, EventT
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fatigue import core_flavour
from fatigue.clock import PartitionClock, partition_for_key
from fatigue.engine import Guard, Step
from fatigue.events import CHANNELS, MAX_ID_CHARS, Rejection, parse_event
from fatigue.inspect import explain
from fatigue.policy import Policy
from fatigue.state import CustomerState, preferences_view
from streams import store as restoring_store
from streams.commit_watch import CommitWatch
from streams.input_gate import HoleListener, Verdict, gated_consumer_class
from streams.metrics import NO_BLOCKS, ActiveBlocks, Metrics, block_untils, install_faust_sensor
from streams.redis_view import RedisView, ViewConsumer, block_key, prefs_key
from streams.settings import Settings

log = logging.getLogger("fatigue.worker")

CONTROL_HEADER = "fatigue-control"
TICK = b"tick"
# A busy partition never gets a tick; its ended blocks are tombstoned by this lighter one, at most once a minute.
EXPIRE_TICK = b"expire"
BUSY_EXPIRE_INTERVAL_S = 60.0
TICK_KEY = b"\x00fatigue-tick"
REROUTED_HEADER = "fatigue-rerouted-from"
# A dead letter carries the original bytes, but one near the broker's size limit (1 MiB by default) plus our headers
# would exceed the producer's (1,000,000 bytes) and stall its partition for good: beyond these sizes a prefix is
# kept, with the original size (fatigue-truncated, fatigue-key-truncated) and digest (fatigue-original-sha256).
DEAD_LETTER_MAX_VALUE_BYTES = 256 * 1024
DEAD_LETTER_MAX_KEY_BYTES = 1024
_MAX_KEY_BYTES = 4 * MAX_ID_CHARS  # the UTF-8 of the longest valid customer id


def dead_letter_value(raw: bytes) -> bytes:
    """What the dead-letter topic holds of a rejected message's value."""
    return raw[:DEAD_LETTER_MAX_VALUE_BYTES]


_FAUST_INTERNAL_PREFIX = b"__faust"
_DELIVERY_GRACE_ON_CANCEL_S = 10.0
# Table values are the offset of the input message being handled when the state last changed (the customer's own
# event, or another message whose partition clock or tick fired its deadline or expired its block) followed by the
# core's own state bytes. A state whose offset is at or after the committed offset may be ahead of the outputs
# (see the module docstring for when).
# A value of the offset alone marks a customer erased at that offset, kept only until that offset is committed.
_OFFSET_BYTES = 8
# the event types that change what preferences_view publishes (time zone, quiet hours, caps, opt-outs)
_PREFERENCE_TYPES = frozenset({"preference", "unsubscribe", "sms_stop"})
# how often lag, state size and active blocks are refreshed (a scrape every 15s sees fresh values)
_GAUGE_INTERVAL_S = 5.0
# an input partition whose commits have not moved for this long, with nothing of it in flight, is re-read
_INPUT_STALL_S = 15.0
# re-reads of records lost on their way to the agent before the partition goes on without them (a record Faust
# always drops would otherwise stall its partition for good)
_REREAD_ATTEMPTS = 3


# an output record: topic, key, value (None: a tombstone), headers, partition (None: by key)
_Output = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None, int | None]


@dataclass(slots=True)
class _Cached:
    """A customer's state while a batch is handled: decoded once, written back once if it changed."""

    offset: int
    state: CustomerState
    written_by: EventT[bytes] | None = None  # the last message that changed it (None: unchanged)


class GuardService:
    """Everything the agents do, as plain synchronous methods over one partition's messages."""

    def __init__(self, settings: Settings, policy: Policy, app: faust.App, metrics: Metrics) -> None:
        self.settings = settings
        self.policy = policy
        self.guard = Guard(policy)
        self.app = app
        self.metrics = metrics
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw", "partitions": settings.partitions}
        self.events = app.topic(settings.events_topic, **raw)
        self.decisions = app.topic(settings.decisions_topic, **raw)
        self.prefs = app.topic(settings.prefs_topic, **raw)
        self.dlq = app.topic(settings.dlq_topic, **raw)
        self.violations = app.topic(settings.violations_topic, **raw)
        # Keys and values are our own bytes (values: offset + the core's compact state), so store and changelog
        # must pass them through untouched. Faust derives the serializers of the table, its store *and* its
        # changelog topic (created inside app.Table) from key_type/value_type, json when they are not given:
        # they must be bytes here, or the changelog is written raw but read back as json, and a worker that
        # restores a partition from the changelog (new host, wiped data dir, rebalance) silently gets no state.
        self.table = app.Table(
            "customer-state-v1",
            store=restoring_store.store_url("customer-state-v1"),  # Faust's, but rebuilds a corrupt partition
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=settings.partitions,
            options={
                "block_cache_size": settings.rocksdb_block_cache_bytes,
                "write_buffer_size": settings.rocksdb_write_buffer_bytes,
                "max_write_buffer_number": 2,
            },
        )
        self.clocks: dict[int, PartitionClock] = {}
        self.expiries: dict[int, list[tuple[int, str, int]]] = {}  # (until, customer, channel) heaps, per partition
        self.expiry_scheduled: dict[int, dict[tuple[str, int], int]] = {}  # the live heap entry per block
        self.last_offset: dict[int, int] = {}
        self.last_input: dict[int, float] = {}
        self.tick_pending: dict[int, float] = {}
        self.expire_pending: dict[int, float] = {}  # partition -> monotonic time its last expire tick was sent
        self.active_blocks = ActiveBlocks()
        self.customers: dict[int, int] = {}  # stored states per indexed partition, for fatigue_state_customers
        self.erasures: dict[int, list[tuple[int, bytes]]] = {}  # (offset, key) of erasure markers, per partition
        self.batch: dict[bytes, _Cached] | None = None  # states of the batch being handled, by key
        self.pending: dict[bytes, _Cached] | None = None  # states of the batch handled, until written back
        self.outbox: list[_Output] | None = None  # outputs of the batch being handled, in order
        # labelled metric children by label values: prometheus_client's labels() costs more than the engine's
        # handling of a plain contact, and the label sets are few
        self._series: dict[tuple[Any, ...], Any] = {}
        self.views: ViewConsumer | None = None  # follows the output topics into Redis (set by create_app)
        self.commit_watch = CommitWatch(stall_s=_INPUT_STALL_S)
        # input partitions to re-read from an offset that never reached the agent: offset, when the last seek was
        # made (None: not yet), seeks made
        self.rereading: dict[int, tuple[int, float | None, int]] = {}
        self.given_up: dict[int, int] = {}  # partition -> first missing offset no re-read brought
        self.in_batch = False

    # ------------------------------------------------------------------ input agent

    def handle_batch(self, events: Sequence[EventT[bytes]]) -> None:
        """Handle a batch of input messages in order; the changed states stay pending until :meth:`write_back`.

        Writing a customer once per batch instead of once per message is what keeps a hot key affordable (its
        state is decoded, encoded and sent to the changelog once per batch) and most of the worker's time off
        Faust's table path. Outputs are only enqueued meanwhile (:meth:`take_outputs`), and the caller writes the
        states back after it has delivered them: a state that includes an event is never stored before what the
        event caused is on the topics, so a crash at any point loses no output (a redelivered batch is handled
        again from the states stored before it and sends the same records again).
        """
        self.batch = {}
        self.outbox = []
        generation = self.app.consumer_generation_id
        owned: set[Any] | None = None
        moved = 0
        try:
            for event in events:
                if event.message.generation_id != generation:
                    # Faust's take buffer hands over what it held from before a rebalance. A partition that went to
                    # another worker is theirs: states written here would interleave with theirs in the changelog.
                    owned = self.app.consumer.assignment() if owned is None else owned
                    if event.message.tp not in owned:
                        moved += 1
                        continue
                # Faust's table and store find the partition of a write from the current event, which its batching
                # (take) does not set for the agent (faust #497): set it, as its own per-message iteration does.
                _current_event.set(weakref.ref(event))
                self.handle(event)
        finally:
            self.pending, self.batch = self.batch, None
            if moved:
                log.info("%d input records of partitions that moved to another worker left to their new owner", moved)

    def write_back(self) -> None:
        """Store the states the batch just handled changed (after its outputs were delivered)."""
        pending, self.pending = self.pending, None
        if pending:
            self._write_back(pending)

    async def run_batch(self, events: Sequence[EventT[bytes]]) -> None:
        """One input batch as the agent runs it: handle it, deliver its outputs, then store the changed states."""
        if self.rereading:
            await self.reread_missed_inputs()
        self.in_batch = True
        try:
            await self._run_batch(events)
        finally:
            self.in_batch = False

    async def _run_batch(self, events: Sequence[EventT[bytes]]) -> None:
        try:
            self.handle_batch(events)
        finally:
            outputs = self.take_outputs()
            delivery = asyncio.ensure_future(self._deliver(outputs))
            try:
                await asyncio.shield(delivery)
            except asyncio.CancelledError:
                # A stop or rebalance: let what is on its way arrive (for a while), so the states stored next are
                # not ahead of the topics.
                await asyncio.wait([delivery], timeout=_DELIVERY_GRACE_ON_CANCEL_S)
                delivery.cancel()
                raise
            finally:
                # After delivery, so a stored state never runs ahead of the topics. When delivery did not complete
                # (cancelled) the states are still written: this process has handled those offsets and would skip
                # them again, and indexing re-sends what each changed state says.
                self.write_back()

    async def _deliver(self, outputs: list[_Output]) -> None:
        """Publish until Kafka has every output: the agent waits (and consumes nothing) while it cannot.

        Going on without them would leave their states stored but their decisions unpublished until the next
        rebalance; sending a batch's outputs again is harmless (compacted keys, violations carry their event id).
        """
        for attempt in itertools.count():
            try:
                await self.publish(outputs)
                return
            except Exception:
                delay = min(self.settings.delivery_retry_max_s, 0.5 * 2**attempt)
                log.warning("delivery attempt %d failed: retrying the batch's outputs in %.1f s", attempt + 1, delay)
                await asyncio.sleep(delay)

    def take_outputs(self) -> list[_Output]:
        """The outputs of the batch just handled (to :meth:`publish`), and stop collecting."""
        outbox, self.outbox = self.outbox or [], None
        return outbox

    async def publish(self, outputs: list[_Output]) -> None:
        """Hand a batch's outputs to the producer in order and wait until Kafka has them all.

        Straight to the producer rather than through Faust's ``send_soon`` buffer, which costs several times
        more per record. Waiting for delivery before the batch is acknowledged keeps at-least-once without
        relying on the flush Faust does before a commit; a record that cannot be delivered (after the
        producer's own retries) raises, and :meth:`_deliver` tries the whole batch again.
        """
        if not outputs:
            return
        producer = self.app.producer
        started = time.monotonic()
        try:
            deliveries = [
                await producer.send(topic, key, value, partition, None, headers)
                for topic, key, value, headers, partition in outputs
            ]
            await asyncio.gather(*deliveries)
        except Exception as error:
            self.app.monitor.on_send_error(producer, error, started)  # faust_total_error_messages_sent_total
            log.error("could not deliver %d outputs of a batch (%r)", len(outputs), error)
            raise

    def _emit(
        self,
        topic: faust.TopicT,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Send one output: into the batch's outbox when a batch is being handled, else through Faust's buffer."""
        outbox = self.outbox
        if outbox is not None:
            outbox.append((topic.get_topic_name(), key, value, headers, partition))
        else:
            topic.send_soon(key=key, value=value, headers=headers, partition=partition)

    def _write_back(self, batch: dict[bytes, _Cached]) -> None:
        for key, cached in batch.items():
            if cached.written_by is None:
                continue
            _current_event.set(weakref.ref(cached.written_by))  # a message of the customer's own partition
            self.metrics.state_bytes.observe(self._write(key, cached.state, cached.offset))

    def handle(self, event: EventT[bytes]) -> None:
        message = event.message
        partition = message.partition
        last = self.last_offset.get(partition)
        if last is not None and message.offset <= last:
            # Handled already by this process, whose effects are enqueued: not a sender's duplicate, nor a crash
            # redelivery. The input gate drops repeats before Faust delivers them; this stays for records of a
            # previous consumer generation that were already in the agent's batch buffer (see handle_batch) and
            # for the commit watch's re-read from the committed offset.
            log.debug("partition %d: offset %d delivered again, skipped", partition, message.offset)
            return
        if last is not None and message.offset > last + 1 and self._missed(message.tp, last + 1, message.offset):
            # Not handled: marked acknowledged already so Faust does not count it when the batch is acknowledged.
            # Its commits take the first run of acknowledged offsets once it starts right after the committed one,
            # so an acknowledgement just past a missing record at the committed offset would commit past it.
            message.acked = True
            return
        self.last_offset[partition] = message.offset
        if self.rereading:
            self.rereading.pop(partition, None)  # the re-read has reached the first missing offset
        headers = dict(message.headers or ())
        control = headers.get(CONTROL_HEADER) if message.key == TICK_KEY else None  # a sender's is an event
        if control == TICK:
            self._on_tick(partition, _tick_time(message.value), message.offset)
            return
        if control == EXPIRE_TICK:
            self._on_expire_tick(partition, _tick_time(message.value), message.offset)
            return
        self.last_input[partition] = time.monotonic()
        self._ensure_indexed(partition, message.offset)
        if self.erasures:
            self._drop_committed_erasures(partition, self._committed(partition))
        if (
            message.key is not None
            and headers.get(REROUTED_HEADER) is None
            # one that cannot be valid is dead-lettered where it is: a copy of a huge one might not fit the producer
            and len(message.key) <= _MAX_KEY_BYTES
            and (message.value is None or len(message.value) <= self.policy.max_event_bytes)
        ):
            expected = partition_for_key(message.key, self.settings.partitions)
            if expected != partition:
                # A producer with another partitioner (librdkafka's default is crc32) put this customer on the
                # wrong partition; its state lives with the murmur2 partition, so forward it there once.
                self._emit(
                    self.events,
                    key=message.key,
                    value=message.value,
                    partition=expected,
                    headers=[*(message.headers or ()), (REROUTED_HEADER, str(partition).encode())],
                )
                self.metrics.rerouted.inc()
                return
        raw = message.value if message.value is not None else b""
        parsed = parse_event(raw, message.key, check_key=True, max_bytes=self.policy.max_event_bytes)
        if isinstance(parsed, Rejection):
            self._dead_letter(message, parsed)
            return
        key = message.key
        assert key is not None
        stored_offset, state = self._load(key)
        blocks_before = block_untils(state)  # the core mutates the state in place
        step = self.guard.process(state, parsed)
        if message.offset <= stored_offset and step.rejection is None:
            # Redelivered after a restart, and the stored state already includes it (states are written in
            # offset order), yet the core would apply it again: an erasure since forgot its event id, or the
            # id cap of a hot key did (an erasure itself is never a duplicate to the core). Applying it twice
            # would count it twice; what it published was re-sent when the partition was indexed.
            self._dead_letter(
                message, Rejection("duplicate", "already applied before a restart", parsed.event_id, parsed.customer_id)
            )
            if self.batch is not None:
                # the core changed the state object in place: read the stored one again next time (it cannot have
                # been changed earlier in this batch, whose messages all come after what is stored)
                self.batch.pop(key, None)
            return
        self.active_blocks.change(partition, blocks_before, block_untils(step.state))
        if (state is None) != (step.state is None) and partition in self.customers:
            self.customers[partition] += 1 if state is None else -1  # a new customer, or an erased one
        if step.erased:
            self._erase(key, step, partition, message.offset)
            return
        if step.rejection is not None:
            # A redelivered event is a duplicate (or late) here; what its first run published and the crash may
            # have lost was re-sent when the partition was indexed (see _repair), so a rejection is all it takes.
            self._dead_letter(message, step.rejection)
            return
        assert step.state is not None
        self._child(self.metrics.events, parsed.type, parsed.channel or "all", parsed.category).inc()
        self._commit(key, step, partition, message.offset)
        if parsed.type in _PREFERENCE_TYPES:
            self._emit(self.prefs, key=key, value=orjson.dumps(preferences_view(step.state)))
        clock = self._clock(partition)
        clock.observe(step.state)
        self._child(self.metrics.partition_event_time, str(partition)).set((clock.time_ms or 0) / 1000)
        self._fire_due(partition, clock.fire_before_ms, "event_time", message.offset)

    def _missed(self, tp: TP, first_missing: int, offset: int) -> bool:
        """Whether ``offset`` came right after ``first_missing - 1`` because the records between were lost on
        their way to the agent (it then waits for a re-read from ``first_missing``), rather than skipped for good
        reason: a seek forward (another worker handled them, or they were committed before a rebalance) or a
        hole the input gate confirmed (transaction markers, retention).

        The input gate delivers every partition to Faust's delivery loop in sequence from its run's start, so a
        record of that run missing here was dropped inside Faust (its read-offset filter, its stream's skip during
        a rebalance): the event would never be handled. Seen once on CI, at a restart, where a contact vanished
        and the hang-up after it was decided without it. Re-reading from the first missing offset hands it over
        again; records handled already are skipped on the way.
        """
        partition = tp.partition
        if partition in self.rereading:
            return True  # fetched before the re-read from the first missing offset, which delivers it again
        if self.given_up.get(partition) == first_missing:
            del self.given_up[partition]
            log.error(
                "input partition %d: offsets %d..%d never reached the agent after %d re-reads; going on without them "
                "(their events are not handled)",
                *(partition, first_missing, offset - 1, _REREAD_ATTEMPTS),
            )
            self.metrics.input_holes.labels(action="accepted").inc()
            return False
        gate = getattr(self.app.consumer, "gate", None)
        start = gate.run_start(tp) if gate is not None else None
        if start is None or start > first_missing:
            return False
        log.warning(
            "input partition %d: offset %d reached the agent right after %d, but the input gate had delivered "
            "%d..%d to Faust: they were dropped on the way; re-reading from %d",
            *(partition, offset, first_missing - 1, first_missing, offset - 1, first_missing),
        )
        self.metrics.input_holes.labels(action="dropped").inc()
        self.rereading[partition] = (first_missing, None, 0)
        return True

    async def reread_missed_inputs(self, retry_after_s: float = _INPUT_STALL_S) -> None:
        """Seek every partition with records lost on their way to the agent back to the first of them (again, if
        an earlier seek has not brought it within ``retry_after_s``; after :data:`_REREAD_ATTEMPTS` seeks the
        partition goes on without them rather than stall). Between batches only, with Faust's acknowledgement
        bookkeeping for the partition cleared."""
        now = time.monotonic()
        for partition, (offset, sought_at, attempts) in list(self.rereading.items()):
            if sought_at is not None and now - sought_at < retry_after_s:
                continue
            if attempts >= _REREAD_ATTEMPTS:
                del self.rereading[partition]
                self.given_up[partition] = offset  # the next record after the gap is handled, with an error
                continue
            await self._reread(TP(self.settings.events_topic, partition), offset)
            self.rereading[partition] = (offset, now, attempts + 1)

    async def _reread(self, tp: TP, offset: int) -> None:
        """Have Faust deliver ``tp`` again from ``offset``, its acknowledgement bookkeeping for it cleared."""
        consumer: Any = self.app.consumer
        for book in ("_acked", "_acked_index", "_gap"):
            getattr(consumer, book, {}).pop(tp, None)
        await consumer.seek(tp, offset)

    def _erase(self, key: bytes, step: Step, partition: int, offset: int) -> None:
        """Right to erasure: delete the state (an empty marker stays until the erasure is committed) and every
        derived record; keep only opt-out suppressions."""
        kept = {decision["channel"] for decision in step.decisions}
        for decision in step.decisions:
            self._send_decision(decision, partition)
        customer = key.decode()
        for channel in CHANNELS:
            if channel not in kept:
                self._emit(self.decisions, key=f"{channel}:{customer}".encode(), value=None)
        self._emit(self.prefs, key=key, value=None)
        self._settle(key)  # the erasure works on the table directly
        if step.state is None:
            if key in self.table:
                # Not deleted yet: a crash before this offset is committed redelivers the customer's earlier
                # events, and with no state at all they would be applied again from nothing (published, then
                # erased again). The marker holds nothing but the offset, and goes once that is committed.
                self.table[key] = offset.to_bytes(_OFFSET_BYTES, "big", signed=True)
                self.erasures.setdefault(partition, []).append((offset, key))
        else:
            self._store(key, step.state, offset)
        self.metrics.erasures.inc()

    def _drop_committed_erasures(self, partition: int, committed: int | None) -> None:
        """Delete the erasure markers of ``partition`` before ``committed`` (never redelivered again)."""
        pending = self.erasures.get(partition)
        if not pending or committed is None:
            return
        while pending and pending[0][0] < committed:
            offset, key = pending.pop(0)
            if self.batch is not None and key in self.batch:
                continue  # the customer came back in this batch: its new state replaces the marker when written
            if self.table.get(key) == offset.to_bytes(_OFFSET_BYTES, "big", signed=True):  # not since replaced
                del self.table[key]
        if not pending:
            del self.erasures[partition]

    def explain(self, customer_id: str) -> dict[str, Any] | None:
        """The right-of-access view of one customer held by this worker."""
        _, state = self._load(customer_id.encode())
        return explain(self.guard, state, int(time.time() * 1000)) if state is not None else None

    def _load(self, key: bytes) -> tuple[int, CustomerState | None]:
        """The stored state and the input offset of the last event that changed it (-1 when none)."""
        batch = self.batch
        if batch is not None:
            cached = batch.get(key)
            if cached is not None:
                return cached.offset, cached.state
        stored = self.table.get(key)
        if stored is None:
            return -1, None
        offset = int.from_bytes(stored[:_OFFSET_BYTES], "big", signed=True)
        if len(stored) == _OFFSET_BYTES:
            return offset, None  # an erasure's marker
        state = CustomerState.from_bytes(stored[_OFFSET_BYTES:])
        if batch is not None:
            batch[key] = _Cached(offset, state)
        return offset, state

    def _store(self, key: bytes, state: CustomerState, offset: int) -> None:
        """Store a changed state: at the end of the batch being handled, or now when there is none."""
        batch = self.batch
        if batch is None:
            self.metrics.state_bytes.observe(self._write(key, state, offset))
            return
        writer = _current_event.get(None)
        cached = batch.get(key)
        if cached is None:
            batch[key] = _Cached(offset, state, writer() if writer is not None else None)
        else:
            cached.offset, cached.state = offset, state
            cached.written_by = writer() if writer is not None else None

    def _write(self, key: bytes, state: CustomerState, offset: int) -> int:
        encoded = state.to_bytes()
        self.table[key] = offset.to_bytes(_OFFSET_BYTES, "big", signed=True) + encoded
        return len(encoded)

    def _settle(self, key: bytes) -> None:
        """Write ``key``'s pending state now and stop caching it, before the table is used directly for it."""
        batch = self.batch
        if batch is None or key not in batch:
            return
        cached = batch.pop(key)
        if cached.written_by is not None:
            self.metrics.state_bytes.observe(self._write(key, cached.state, cached.offset))

    def _commit(self, key: bytes, step: Step, partition: int, offset: int) -> None:
        """Store the new state, then route its effects (all enqueued in order)."""
        assert step.state is not None
        self._store(key, step.state, offset)
        now = time.time()
        for decision in step.decisions:
            self._send_decision(decision, partition)
            self.metrics.latency.observe(max(now - decision["decided_at_ms"] / 1000, 0.0))
        for violation in step.violations:
            self._emit(self.violations, key=key, value=orjson.dumps(violation))
            self.metrics.violations.labels(
                kind=violation["kind"],
                channel=violation["channel"],
                sender=self.metrics.sender_label(violation["sender"]),  # capped: senders come from the input
            ).inc()

    def _send_decision(self, decision: dict[str, Any], partition: int) -> None:
        self._emit(
            self.decisions,
            key=_decision_key(decision["channel"], decision["customer_id"]),
            value=orjson.dumps(decision),
        )
        self._child(self.metrics.decisions, decision["action"], decision["reason"], decision["channel"]).inc()
        until = decision["until_ms"]
        if decision["action"] == "block" and until is not None:
            self._schedule_expiry(partition, until, decision["customer_id"], CHANNELS.index(decision["channel"]))

    def _schedule_expiry(self, partition: int, until: int, customer: str, channel: int) -> None:
        """Have the block of ``customer`` on ``channel`` looked at when ``until`` passes.

        One entry per block in force, the earliest: a later ``until`` (a hot customer's block is re-decided on
        every contact) waits until that entry comes due and finds the newer decision. One entry per decision
        instead grew without bound for a hot key, and each of its stale entries coming due woke a tick.
        """
        scheduled = self.expiry_scheduled.setdefault(partition, {})
        current = scheduled.get((customer, channel))
        if current is None or until < current:
            scheduled[(customer, channel)] = until
            heapq.heappush(self.expiries.setdefault(partition, []), (until, customer, channel))

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once per label set (values in the metric's label order)."""
        key = (id(metric), *values)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = metric.labels(*values)
        return child

    def _dead_letter(self, message: Any, rejection: Rejection) -> None:
        headers = [
            ("fatigue-reason", rejection.reason.encode()),
            ("fatigue-detail", rejection.detail.encode()[:512]),
            ("fatigue-source-topic", str(message.topic).encode()),
            ("fatigue-source-partition", str(message.partition).encode()),
            ("fatigue-source-offset", str(message.offset).encode()),
        ]
        if rejection.event_id is not None:
            headers.append(("fatigue-event-id", rejection.event_id.encode()))
        key, value = message.key, message.value if message.value is not None else b""
        if len(value) > DEAD_LETTER_MAX_VALUE_BYTES:
            headers.append(("fatigue-truncated", str(len(value)).encode()))
            headers.append(("fatigue-original-sha256", hashlib.sha256(value).hexdigest().encode()))
            value = dead_letter_value(value)
        if key is not None and len(key) > DEAD_LETTER_MAX_KEY_BYTES:
            headers.append(("fatigue-key-truncated", str(len(key)).encode()))
            key = key[:DEAD_LETTER_MAX_KEY_BYTES]
        self._emit(self.dlq, key=key, value=value, headers=headers)
        self._child(self.metrics.rejected, rejection.reason.split(":", 1)[0]).inc()

    # ------------------------------------------------------------------ clocks, deadlines and expiry

    def _clock(self, partition: int) -> PartitionClock:
        clock = self.clocks.get(partition)
        if clock is None:
            clock = self.clocks[partition] = PartitionClock(self.settings.deadline_settle_ms)
        return clock

    def _ensure_indexed(self, partition: int, offset: int) -> None:
        """After (re)assignment, rebuild the partition's clock and expiry index from its stored states, and repair
        the outputs of the states that may be ahead of them (see :meth:`_repair`).

        Runs when the partition's first message since the assignment is handled (``offset``), after table
        recovery, so before any redelivered message is processed.
        """
        if partition in self.clocks:
            return
        clock = self._clock(partition)
        expiries: list[tuple[int, str, int]] = []
        self.active_blocks.reset(partition, int(time.time() * 1000))
        customers = 0
        # Where the group resumed reading: the consumer starts an assigned partition at its committed offset, so
        # the first message is there. Faust's own record of committed offsets can lag it (it is updated once it
        # has asked the broker for every partition, while the first messages already flow), so it only counts
        # when it is known and lower (input before the first message deleted by retention).
        committed = self._committed(partition)
        resume = offset if committed is None else min(offset, committed)
        ahead: list[CustomerState] = []
        erased: list[tuple[int, bytes]] = []
        for key, stored in self._stored_states(partition):
            changed_at = int.from_bytes(stored[:_OFFSET_BYTES], "big", signed=True)
            if len(stored) == _OFFSET_BYTES:
                erased.append((changed_at, key))
                continue
            state = CustomerState.from_bytes(stored[_OFFSET_BYTES:])
            clock.observe(state)
            self.active_blocks.change(partition, NO_BLOCKS, block_untils(state))
            customers += 1
            for channel, record in enumerate(state.emitted):
                if record is not None and record[1]["action"] == "block" and record[1]["until_ms"] is not None:
                    expiries.append((record[1]["until_ms"], state.customer_id, channel))
            if changed_at >= resume:
                ahead.append(state)
        heapq.heapify(expiries)
        self.expiries[partition] = expiries
        self.expiry_scheduled[partition] = {(customer, channel): until for until, customer, channel in expiries}
        self.customers[partition] = customers
        log.info("partition %d indexed: %d pending deadlines, %d expiring blocks", partition, len(clock), len(expiries))
        # erasure markers: those committed are no longer needed, the others may be ahead of their tombstones
        erased.sort()
        self.erasures[partition] = erased
        self._drop_committed_erasures(partition, resume)
        uncommitted = [key for _, key in self.erasures.get(partition, [])]
        if ahead or uncommitted:
            self._repair(partition, resume, ahead, uncommitted)

    def _committed(self, partition: int) -> int | None:
        """The group's committed offset of an input partition (the next offset to read), as far as Faust knows
        it: None when it does not (yet), or has none above 0."""
        # Faust's own record, not public API: a defaultdict of None, offset 0 stored as None too, set by its seek
        # to committed offsets after an assignment and updated by every commit.
        committed = getattr(self.app.consumer, "_committed_offset", None)
        return None if committed is None else committed.get(TP(self.settings.events_topic, partition))

    def _repair(self, partition: int, resume: int, states: list[CustomerState], erased: list[bytes]) -> None:
        """Re-send what the topics should hold for customers whose state changed at or after the committed offset.

        Their state may have been stored before the outputs of that change were delivered (a batch whose delivery
        was cancelled, an erasure, a repair's own records), and a crash (SIGKILL, OOM, power) before the
        next commit loses those outputs; the input is redelivered from ``resume``, where the core sees
        the customer's events as duplicates (or late) and publishes nothing, and a deadline or expiry fired then
        does not fire again. What the state remembers is what the compacted topics must end with, so each such
        customer gets, in order before the redelivered input: per channel its latest decision (a block, or an
        allow still remembered) or, when it remembers none, a tombstone (the channel is not blocked: an expired
        block, an allow older than the late grace or no decision at all; Redis deletes the key, and a tombstone of
        a key that never had a record is a no-op); and its preferences view, or a tombstone when it has none. A
        customer erased there (``erased``: keys of erasure markers) gets tombstones only, as the erasure sent.
        Idempotent: a compacted topic and Redis keep only the latest record per key.
        """
        decisions = views = 0
        for state in states:
            customer = state.customer_id
            latest = {decision["channel"]: decision for decision in self.guard.latest_decisions(state)}
            for channel in CHANNELS:
                decision = latest.get(channel)
                value = orjson.dumps(decision) if decision is not None else None
                self._emit(self.decisions, key=_decision_key(channel, customer), value=value)
            decisions += len(latest)
            if _has_preferences(state):
                self._emit(self.prefs, key=customer.encode(), value=orjson.dumps(preferences_view(state)))
                views += 1
            else:
                self._emit(self.prefs, key=customer.encode(), value=None)
        for key in erased:
            for channel in CHANNELS:
                self._emit(self.decisions, key=_decision_key(channel, key.decode()), value=None)
            self._emit(self.prefs, key=key, value=None)
        customers = len(states) + len(erased)
        self.metrics.repaired.inc(4 * customers)  # records re-sent: one per channel and one preferences record
        log.info(
            "partition %d: %d customers changed at or after committed offset %d (%d of them erased), re-sent "
            "%d decisions, %d decision tombstones, %d preference views and %d preference tombstones",
            partition,
            customers,
            resume,
            len(erased),
            decisions,
            3 * customers - decisions,
            views,
            customers - views,
        )

    def _stored_states(self, partition: int) -> Iterable[tuple[bytes, bytes]]:
        """(key, table value) of every customer stored for ``partition``."""
        # Faust's RocksDB store keeps one database per partition; iterating it directly is the only way to
        # list one partition's keys (the table API iterates all active partitions together).
        open_partition = getattr(self.table.data, "_db_for_partition", None)
        if open_partition is None:
            return
        database = open_partition(partition)
        for key, value in database.items():
            if isinstance(key, bytes) and not key.startswith(_FAUST_INTERNAL_PREFIX) and value:
                yield key, value

    def _fire_due(self, partition: int, before_ms: int | None, clock_name: str, offset: int) -> None:
        """Advance the partition's customers whose deadlines fall before ``before_ms``.

        ``offset`` is the input message being handled (the event that moved the clock, or the tick): stored with
        the advanced states, it marks them as changed by that message, so a crash before it is committed finds
        them ahead of their outputs (no redelivered event of theirs would show it).
        """
        if before_ms is None:
            return
        clock = self._clock(partition)
        for customer in clock.due(before_ms):
            key = customer.encode()
            _, state = self._load(key)
            if state is None:
                continue
            blocks_before = block_untils(state)
            step = self.guard.advance(state, before_ms)
            self.active_blocks.change(partition, blocks_before, block_untils(step.state))
            self._commit(key, step, partition, offset)
            clock.schedule(state)
            self._child(self.metrics.deadlines_fired, clock_name).inc()

    def _on_tick(self, partition: int, wall_ms: int, offset: int) -> None:
        """Wall clock on a quiet partition (``offset``: the tick's own): fire due deadlines, tombstone expired
        blocks."""
        self.tick_pending.pop(partition, None)
        self._ensure_indexed(partition, offset)
        bound = wall_ms - self.settings.wall_settle_ms
        self._fire_due(partition, bound, "wall_clock", offset)
        self._tombstone_expired(partition, bound, offset, forget=True)

    def _on_expire_tick(self, partition: int, wall_ms: int, offset: int) -> None:
        """Wall clock on a busy partition: tombstone ended blocks, nothing else (see _tombstone_expired)."""
        self.expire_pending.pop(partition, None)
        self._ensure_indexed(partition, offset)
        self._tombstone_expired(partition, wall_ms - self.settings.wall_settle_ms, offset, forget=False)

    def _tombstone_expired(self, partition: int, bound: int, offset: int, *, forget: bool) -> None:
        """Tombstone the blocks of ``partition`` that ended before ``bound`` (wall clock), so that the compacted
        topic drops them (``offset``: the tick's own). Runs on a quiet partition's tick and on a busy one's expire
        tick.

        ``forget`` (quiet partitions only): the state also forgets a block once the late grace after its end is
        over by wall clock. A busy partition may be reading old input (a backfill) whose event time is far behind
        the wall clock; its states are left to the core, which forgets by event time, as the replay does.
        """
        expiries = self.expiries.get(partition, [])
        scheduled = self.expiry_scheduled.get(partition, {})
        while expiries and expiries[0][0] <= bound:
            until, customer, channel = heapq.heappop(expiries)
            if scheduled.get((customer, channel)) != until:
                continue  # replaced by an earlier entry, which has come due already
            del scheduled[(customer, channel)]
            key = customer.encode()
            _, state = self._load(key)
            if state is None:
                continue
            record = state.emitted[channel]
            if record is None or record[1]["action"] != "block" or record[1]["until_ms"] is None:
                continue  # lifted, or blocked for good since
            ended = record[1]["until_ms"]
            if ended > bound:
                self._schedule_expiry(partition, ended, customer, channel)  # re-decided later
                continue
            # The state keeps an ended block for the late grace (a contact made before its end that arrives
            # later is a violation): the tombstone goes out now, the record is forgotten when the grace is over.
            forget_at = ended + self.guard.policy.late_grace_ms
            if forget_at > bound:
                self._schedule_expiry(partition, forget_at, customer, channel)
            elif forget:
                state.emitted[channel] = None
                # stored with the tick's offset: a crash before the tick is committed then finds the state ahead
                # of the topic and re-sends the tombstone (see _repair)
                self._store(key, state, offset)
            if until != forget_at:  # not the entry that only forgets: its tombstone went out at the end
                self._emit(self.decisions, key=_decision_key(CHANNELS[channel], customer), value=None)
                self.metrics.tombstones.inc()

    def partitions_changed(self) -> None:
        """Forget in-memory indexes: they are rebuilt from the table for the partitions we own next."""
        self.commit_watch.forget()
        self.rereading.clear()  # the new assignment reads from the committed offsets, which are not past them
        self.given_up.clear()
        self.clocks.clear()
        self.expiries.clear()
        self.expiry_scheduled.clear()
        self.erasures.clear()
        self.tick_pending.clear()
        self.expire_pending.clear()
        self.active_blocks.forget()
        self.customers.clear()

    async def quiet_partitions(self) -> list[int]:
        """Input partitions we own that have nothing left to read and had no input for ``quiet_after_s``."""
        now = time.monotonic()
        quiet = []
        consumer = self.app.consumer
        for tp in consumer.assignment():
            if tp.topic != self.settings.events_topic:
                continue
            partition = tp.partition
            if now - self.last_input.get(partition, 0.0) < self.settings.quiet_after_s:
                continue
            if now - self.tick_pending.get(partition, 0.0) < 10 * self.settings.tick_interval_s:
                continue
            highwater = consumer.highwater(tp)
            last = self.last_offset.get(partition)
            if highwater is not None and last is not None and highwater > last + 1:
                # Records left to read, unless what is left is a transactional sender's commit marker, which no
                # consumer ever gets: then the fetch position has passed the high watermark.
                try:
                    position = await asyncio.wait_for(consumer.position(tp), timeout=5.0)
                except Exception:  # no position now (a rebalance, a reset): look again on the next tick
                    continue
                if position is None or position < highwater:
                    continue
            quiet.append(partition)
        return quiet

    def has_due_work(self, partition: int, wall_ms: int) -> bool:
        if partition not in self.clocks:
            return True
        bound = wall_ms - self.settings.wall_settle_ms
        heap = self.clocks[partition]._heap
        expiries = self.expiries.get(partition, [])
        return bool((heap and heap[0][0] < bound) or (expiries and expiries[0][0] <= bound))

    def busy_partitions_with_ended_blocks(self, wall_ms: int, quiet: list[int]) -> list[int]:
        """Input partitions we own, not quiet, with a block ended before the wall clock's settle bound and no expire
        tick sent for ``BUSY_EXPIRE_INTERVAL_S``."""
        bound = wall_ms - self.settings.wall_settle_ms
        now = time.monotonic()
        due = []
        for partition, expiries in self.expiries.items():
            if partition in quiet or not expiries or expiries[0][0] > bound:
                continue
            if now - self.expire_pending.get(partition, -BUSY_EXPIRE_INTERVAL_S) < BUSY_EXPIRE_INTERVAL_S:
                continue
            due.append(partition)
        return due

    def send_expire_tick(self, partition: int, wall_ms: int) -> None:
        self.expire_pending[partition] = time.monotonic()
        self.events.send_soon(
            key=TICK_KEY, value=str(wall_ms).encode(), partition=partition, headers=[(CONTROL_HEADER, EXPIRE_TICK)]
        )

    def send_tick(self, partition: int, wall_ms: int) -> None:
        self.tick_pending[partition] = time.monotonic()
        self.events.send_soon(
            key=TICK_KEY, value=str(wall_ms).encode(), partition=partition, headers=[(CONTROL_HEADER, TICK)]
        )

    async def reread_stalled_inputs(self) -> None:
        """Re-read, from its committed offset, every input partition whose commits Faust has stopped advancing
        (see :mod:`streams.commit_watch`)."""
        if self.in_batch or getattr(self.app, "rebalancing", False) or getattr(self.app, "in_recovery", False):
            return
        if self.rereading:  # no batch has come since the loss was found: the last records went missing
            await self.reread_missed_inputs()
        consumer: Any = self.app.consumer
        # Faust's own bookkeeping, not public API: committed and last delivered offsets per partition, the
        # messages delivered and not yet acknowledged, and the acknowledged offsets it builds commits from
        committed_offsets = getattr(consumer, "_committed_offset", None)
        read_offsets = getattr(consumer, "_read_offset", None)
        unacked = getattr(consumer, "_unacked_messages", None)
        if committed_offsets is None or read_offsets is None or unacked is None:
            return
        # Faust leaves a message it acknowledged below the committed offset in that set for good (a stale
        # delivery from before a rebalance): only unacknowledged ones are in flight
        in_flight = {message.tp for message in list(unacked) if not message.acked}
        now = time.monotonic()
        for tp in consumer.assignment():
            if tp.topic != self.settings.events_topic:
                continue
            committed = committed_offsets.get(tp)
            read = read_offsets.get(tp)
            end = consumer.highwater(tp)
            if not self.commit_watch.stuck(
                tp, committed=committed, read=read, end=end, in_flight=tp in in_flight, now=now
            ):
                continue
            log.warning(
                "input partition %d: commits stuck at offset %s for %.0fs while offsets up to %s were delivered "
                "and acknowledged as far as they came; re-reading from %s (records handled already are skipped)",
                tp.partition,
                committed,
                _INPUT_STALL_S,
                read,
                committed,
            )
            await self._reread(tp, committed)
            self.commit_watch.forget(tp)
            self.metrics.input_rereads.inc()

    # ------------------------------------------------------------------ operational gauges

    async def refresh_gauges(self) -> None:
        """Consumer lag, state size and active blocks: values read on a timer, not per event."""
        self.active_blocks.publish(self.metrics.active_blocks, int(time.time() * 1000))
        try:
            consumer = self.app.consumer
            assignment = consumer.assignment()
        except Exception:  # the consumer is not started yet (or is restarting): nothing to measure
            return
        events = self.settings.events_topic
        tps = sorted((tp for tp in assignment if tp.topic == events), key=lambda tp: tp.partition)
        self.metrics.assigned_partitions.labels(topic=events).set(len(tps))
        lags = await self._lags(consumer, tps)
        if self.views is not None:
            for topic in self.views.views:
                self.metrics.assigned_partitions.labels(topic=topic).set(len(self.views.owned_partitions(topic)))
            try:
                lags.update(await asyncio.wait_for(self.views.lags(), timeout=5.0))
            except Exception as error:  # the view's consumer is restarting: its lag shows again next time
                log.debug("redis view lag unavailable: %s", error)
        self.metrics.set_consumer_lag(lags)
        owned = [tp.partition for tp in tps]
        self.metrics.set_state_size(
            {p: self.customers[p] for p in owned if p in self.customers}, self._store_bytes(owned)
        )
        self.metrics.refreshes.inc()

    async def _lags(self, consumer: Any, tps: list[Any]) -> dict[tuple[str, int], int]:
        if not tps:
            return {}
        try:
            # asked from the broker: the fetcher's cached high watermark stops moving while a partition is paused
            highwaters = dict(await asyncio.wait_for(consumer.highwaters(*tps), timeout=5.0))
        except Exception:
            highwaters = {tp: consumer.highwater(tp) for tp in tps}
        # faust's record of the group's committed offsets (next offset to read), kept per assigned partition
        committed: Any = getattr(consumer, "_committed_offset", {})
        lags: dict[tuple[str, int], int] = {}
        for tp in tps:
            highwater = highwaters.get(tp)
            if highwater is None:
                continue
            candidates = [committed.get(tp)]
            if tp.topic == self.settings.events_topic and tp.partition in self.last_offset:
                candidates.append(self.last_offset[tp.partition] + 1)  # processed, maybe not committed yet
            known = [offset for offset in candidates if offset is not None]
            if known:
                lags[(tp.topic, tp.partition)] = max(highwater - max(known), 0)
        return lags

    def _store_bytes(self, partitions: list[int]) -> dict[int, int]:
        databases: Any = getattr(self.table.data, "_dbs", {})  # faust's open RocksDB per partition
        sizes: dict[int, int] = {}
        for partition in partitions:
            database = databases.get(partition)
            if database is None or not hasattr(database, "property_int_value"):
                continue
            sizes[partition] = sum(
                int(database.property_int_value(name) or 0)
                for name in ("rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables")
            )
        return sizes


def _decision_key(channel: str, customer_id: str) -> bytes:
    """The decisions topic's key: ``{channel}:{customer_id}``."""
    return f"{channel}:{customer_id}".encode()


def _has_preferences(state: CustomerState) -> bool:
    """Whether the preferences view was published for this customer (and not since tombstoned by an erasure).

    The worker publishes the view after every accepted preference, unsubscribe or SMS STOP event, and each of
    them leaves a fact with its event time in the state (a preference that loses to a newer fact leaves the newer
    one); an erasure tombstones the view and keeps only opt-outs stamped at instant 0, which no accepted event can
    have (event times start in 2000). None of these facts is ever trimmed.
    """
    return (
        state.timezone is not None
        or any(fact is not None for fact in state.quiet)
        or any(fact is not None for fact in state.customer_caps)
        or any(fact is not None and fact[0] > 0 for fact in state.opt_outs)
    )


def _tick_time(value: bytes | None) -> int:
    """The wall-clock instant a tick carries, never later than our own clock: a forged tick from the future
    must not fire deadlines early or tombstone blocks that are still in force."""
    now_ms = int(time.time() * 1000)
    try:
        return min(int(value or b"0"), now_ms)
    except ValueError:
        return 0


def _hole_logger(metrics: Metrics) -> HoleListener:
    markers_logged: set[int] = set()

    def on_hole(tp: TP, expected: int, offset: int, verdict: Verdict) -> None:
        if verdict is Verdict.SEEK:
            log.info(
                "input partition %d: fetched offset %d while %d is next: seeking back to %d (a stale fetch, or a "
                "hole to confirm)",
                *(tp.partition, offset, expected, expected),
            )
            metrics.input_holes.labels(action="reread").inc()
        elif offset - expected == 1:
            # a producer's transaction leaves its commit marker at one offset no consumer ever sees: normal for a
            # transactional sender, so logged once per partition
            if tp.partition not in markers_logged:
                markers_logged.add(tp.partition)
                log.info(
                    "input partition %d: offset %d does not exist (a transaction marker); further ones are only "
                    'counted, in fatigue_input_holes_total{action="marker"}',
                    *(tp.partition, expected),
                )
            metrics.input_holes.labels(action="marker").inc()
        else:
            log.warning(
                "input partition %d: offsets %d..%d no longer exist (deleted by retention before they were read?); "
                "reading on from %d",
                *(tp.partition, expected, offset - 1, offset),
            )
            metrics.input_holes.labels(action="accepted").inc()

    return on_hole


def create_app(settings: Settings, policy: Policy, metrics: Metrics | None = None) -> tuple[faust.App, GuardService]:
    """Build the Faust app and its service from settings (the composition root)."""
    metrics = metrics or Metrics(max_sender_labels=settings.sender_label_limit)
    metrics.policy_info.labels(version=policy.version).set(1)
    metrics.core_info.labels(flavour=core_flavour()).set(1)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        store="rocksdb://",
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        topic_disable_leader=True,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        broker_session_timeout=settings.session_timeout_s,
        # at most a third of the session (Kafka's advice): with 6 s and 3 s beats one late beat loses the member
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        producer_acks=-1,
        stream_wait_empty=False,
        table_standby_replicas=0,
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        autodiscover=False,
    )
    # keeps Faust from skipping input records it has not delivered (see streams/input_gate.py); set before
    # anything creates the consumer
    cast(Any, app.transport).Consumer = gated_consumer_class([settings.events_topic], _hole_logger(metrics))
    install_faust_sensor(app, metrics.registry)  # faust's rebalance/commit/send metrics on the same /metrics
    service = GuardService(settings, policy, app, metrics)
    redis_client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    blocks_view = RedisView(
        redis_client,
        topic=settings.decisions_topic,
        bootstrap=settings.bootstrap,
        partitions=settings.partitions,
        redis_key=lambda key: block_key(settings.redis_prefix, key),
        scan_pattern=f"{settings.redis_prefix}:block:*",
        expiring=True,
        metrics=metrics,
    )
    prefs_view = RedisView(
        redis_client,
        topic=settings.prefs_topic,
        bootstrap=settings.bootstrap,
        partitions=settings.partitions,
        redis_key=lambda key: prefs_key(settings.redis_prefix, key),
        scan_pattern=f"{settings.redis_prefix}:prefs:*",
        expiring=False,
        metrics=metrics,
    )

    # concurrency 1: Faust can commit past an in-flight message with more, and table writes need it
    @app.agent(service.events, concurrency=1, name="guard")
    async def guard_agent(stream: faust.StreamT[bytes]) -> None:
        stream_of_bytes = cast(faust.Stream[bytes], stream)
        async for batch in stream_of_bytes.take_events(settings.input_batch, within=settings.input_batch_wait_s):
            await service.run_batch(batch)  # before take_events acknowledges it

    views = ViewConsumer(
        [blocks_view, prefs_view],
        bootstrap=settings.bootstrap,
        group_id=settings.redis_view_group,
        batch=settings.redis_batch,
    )
    service.views = views

    @app.task
    async def follow_topics_into_redis() -> None:
        await views.run()

    @app.timer(interval=settings.tick_interval_s)
    async def tick_quiet_partitions() -> None:
        wall_ms = int(time.time() * 1000)
        quiet = await service.quiet_partitions()
        for partition in quiet:
            if service.has_due_work(partition, wall_ms):
                service.send_tick(partition, wall_ms)
        for partition in service.busy_partitions_with_ended_blocks(wall_ms, quiet):
            service.send_expire_tick(partition, wall_ms)

    def forget_indexes(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        service.partitions_changed()

    @app.timer(interval=_GAUGE_INTERVAL_S)
    async def reread_stalled_inputs() -> None:
        await service.reread_stalled_inputs()

    @app.timer(interval=_GAUGE_INTERVAL_S)
    async def refresh_gauges() -> None:
        await service.refresh_gauges()

    app.on_partitions_revoked.connect(forget_indexes)
    app.on_partitions_assigned.connect(forget_indexes)

    @app.page("/metrics")
    async def metrics_page(self: Any, request: Any) -> Any:
        return self.bytes(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/customers/{customer_id}/")
    @app.table_route(table=service.table, match_info="customer_id")
    async def customer_page(self: Any, request: Any, customer_id: str) -> Any:
        # routed to the worker that owns the customer's partition; answered from its local state
        view = service.explain(customer_id)
        if view is None:
            return self.json({"customer_id": customer_id, "error": "unknown customer"}, status=404)
        return self.json(view)

    @app.page("/health")
    async def health_page(self: Any, request: Any) -> Any:
        return self.json({"status": "ok", "policy_version": policy.version})

    return app, service
