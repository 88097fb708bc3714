"""One Kafka partition's share of the guard, as the streaming pipeline drives it: its customers' states (loaded on
demand from a store, evictable), its event-time clock, and every output of each input message as ready-to-send
records.

``fatigue.replay.Replay(partitions=N)`` is the oracle of this module: :class:`PartitionDriver` over a partition's
messages, in order, produces the same decisions, violations and rejections as the replay does for them, and leaves
the same states (tests/unit/test_partition.py runs them in lock step, with states evicted and reloaded at random).

Two engines implement :class:`CustomerEngine`: :class:`PythonEngine` here (the engine of record) and the native
one (``fatigue.native.NativeEngine``), held byte-equal to it. Both read states they do not hold from a
:data:`Loader` (the pipeline's RocksDB store) and hand back the states they changed (:meth:`take_dirty`), encoded
as :meth:`CustomerState.to_bytes` encodes them, for the state changelog.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from fatigue.clock import PartitionClock
from fatigue.engine import Guard
from fatigue.events import Rejection, parse_event
from fatigue.state import CustomerState, json_bytes, preferences_view

# The state of a customer this engine does not hold, as the store has it (None: no state stored).
Loader = Callable[[str], "bytes | None"]

# A decision as an output record and what the pipeline needs to know of it without decoding it:
#   (topic key ``{channel}:{customer_id}``, JSON value, action, reason, channel, until_ms, decided_at_ms)
DecisionRecord = tuple[bytes, bytes, str, str, str, "int | None", int]
# A sender violation: (JSON value, kind, channel, sender)
ViolationRecord = tuple[bytes, str, str, "str | None"]

# the event types after which the customer's preferences view is (re)published
PREFERENCE_TYPES: Final = frozenset({"preference", "unsubscribe", "sms_stop"})


class Outcome:
    """Everything one input message caused, ready to route.

    ``decisions`` includes those of other customers whose unread deadlines the message's event time settled
    (partition clock), after the message's own. ``prefs`` is the customer's preferences view (JSON) when the event
    changed it, ``erased`` says the customer was erased (every decision key without a decision here, and the
    preferences view, are to be tombstoned).
    """

    __slots__ = (
        "category",
        "channel",
        "customer_id",
        "decisions",
        "erased",
        "event_type",
        "prefs",
        "rejection",
        "violations",
    )

    def __init__(
        self,
        rejection: Rejection | None,
        customer_id: str | None = None,
        event_type: str | None = None,
        channel: str | None = None,
        category: str | None = None,
        decisions: list[DecisionRecord] | None = None,
        violations: list[ViolationRecord] | None = None,
        prefs: bytes | None = None,
        erased: bool = False,
    ) -> None:
        self.rejection = rejection
        self.customer_id = customer_id
        self.event_type = event_type
        self.channel = channel
        self.category = category
        self.decisions: list[DecisionRecord] = [] if decisions is None else decisions
        self.violations: list[ViolationRecord] = [] if violations is None else violations
        self.prefs = prefs
        self.erased = erased


# What an engine returns for one input message: the fields of :class:`Outcome`, with the rejection as
# (reason, detail, event_id, customer_id), then the customer's watermark and next deadline after it (None for a
# rejection or an erasure), which the partition clock needs:
#   (rejection, customer_id, event_type, channel, category, decisions, violations, prefs, erased, watermark_ms,
#    next_deadline_ms)
# A tuple, not an object: the native engine builds it in Rust, and the pipeline reads one for every input record.
RejectionFields = tuple[str, str, "str | None", "str | None"]
Processed = tuple[
    "RejectionFields | None",
    "str | None",
    "str | None",
    "str | None",
    "str | None",
    list[DecisionRecord],
    list[ViolationRecord],
    "bytes | None",
    bool,
    "int | None",
    "int | None",
]


def rejected(rejection: Rejection) -> Processed:
    """What an engine returns for a rejected message."""
    fields = (rejection.reason, rejection.detail, rejection.event_id, rejection.customer_id)
    return (fields, None, None, None, None, [], [], None, False, None, None)


def outcome_of(processed: Processed) -> Outcome:
    rejection = processed[0]
    if rejection is not None:
        return Outcome(Rejection(*rejection))
    return Outcome(None, *processed[1:9])


class CustomerEngine(Protocol):
    """The guard's core over the customers of one partition (see the module docstring)."""

    def process(self, raw: bytes, key: bytes | None) -> Processed:
        """Parse, validate and apply one input message."""
        ...

    def advance(self, customer_id: str, now_ms: int) -> tuple[list[DecisionRecord], int | None]:
        """Let time pass for one customer (``Guard.advance``): its decisions and its next deadline after."""
        ...

    def take_dirty(self) -> list[tuple[str, bytes | None]]:
        """The states changed since the last call, encoded (None: deleted), in the order first changed."""
        ...

    def evict(self, keep: int) -> int:
        """Forget clean states beyond the ``keep`` most recently loaded or changed; how many were forgotten."""
        ...

    def resident(self) -> int:
        """How many customers' states (or known absences) are held."""
        ...

    def state_bytes(self, customer_id: str) -> bytes | None:
        """The customer's state, encoded (held, or from the loader)."""
        ...


def decision_record(decision: dict[str, object]) -> DecisionRecord:
    """A decision of the Python core as an output record."""
    channel = str(decision["channel"])
    until = decision["until_ms"]
    decided_at = decision["decided_at_ms"]
    assert isinstance(decided_at, int)
    return (
        f"{channel}:{decision['customer_id']}".encode(),
        json_bytes(decision),
        str(decision["action"]),
        str(decision["reason"]),
        channel,
        until if isinstance(until, int) else None,
        decided_at,
    )


def violation_record(violation: dict[str, object]) -> ViolationRecord:
    sender = violation.get("sender")
    return (
        json_bytes(violation),
        str(violation["kind"]),
        str(violation["channel"]),
        sender if isinstance(sender, str) else None,
    )


class PythonEngine:
    """:class:`CustomerEngine` on :class:`fatigue.engine.Guard` (the engine of record)."""

    def __init__(self, guard: Guard, loader: Loader, *, check_key: bool = True) -> None:
        self.guard = guard
        self.loader = loader
        self.check_key = check_key
        self.max_bytes = guard.policy.max_event_bytes
        # None: the store has no state for the customer (never seen, or erased)
        self.states: dict[str, CustomerState | None] = {}
        self.dirty: dict[str, None] = {}  # an ordered set

    def _state(self, customer_id: str) -> CustomerState | None:
        states = self.states
        if customer_id in states:
            return states[customer_id]
        stored = self.loader(customer_id)
        state = None if stored is None else CustomerState.from_bytes(stored)
        states[customer_id] = state
        return state

    def process(self, raw: bytes, key: bytes | None) -> Processed:
        parsed = parse_event(raw, key, check_key=self.check_key, max_bytes=self.max_bytes)
        if isinstance(parsed, Rejection):
            return rejected(parsed)
        customer_id = parsed.customer_id
        state = self._state(customer_id)
        step = self.guard.process(state, parsed)
        if step.rejection is not None:
            return rejected(step.rejection)
        self.states[customer_id] = step.state
        self.dirty[customer_id] = None
        decisions = [decision_record(decision) for decision in step.decisions]
        violations = [violation_record(violation) for violation in step.violations]
        prefs: bytes | None = None
        watermark_ms: int | None = None
        next_deadline_ms: int | None = None
        if not step.erased:
            new = step.state
            assert new is not None
            if parsed.type in PREFERENCE_TYPES:
                prefs = json_bytes(preferences_view(new))
            watermark_ms = new.watermark_ms
            next_deadline_ms = new.next_deadline_ms()
        return (
            None,
            customer_id,
            parsed.type,
            parsed.channel,
            parsed.category,
            decisions,
            violations,
            prefs,
            step.erased,
            watermark_ms,
            next_deadline_ms,
        )

    def advance(self, customer_id: str, now_ms: int) -> tuple[list[DecisionRecord], int | None]:
        state = self._state(customer_id)
        if state is None:
            return [], None  # erased since it was scheduled
        step = self.guard.advance(state, now_ms)
        self.dirty[customer_id] = None
        return [decision_record(decision) for decision in step.decisions], state.next_deadline_ms()

    def take_dirty(self) -> list[tuple[str, bytes | None]]:
        states = self.states
        changed: list[tuple[str, bytes | None]] = []
        for customer_id in self.dirty:
            state = states[customer_id]
            changed.append((customer_id, None if state is None else state.to_bytes()))
        self.dirty = {}
        return changed

    def evict(self, keep: int) -> int:
        states = self.states
        excess = len(states) - keep
        if excess <= 0:
            return 0
        # oldest first (insertion order); a dirty state is never dropped before it is taken
        victims = [customer for customer in states if customer not in self.dirty][:excess]
        for customer in victims:
            del states[customer]
        return len(victims)

    def resident(self) -> int:
        return len(self.states)

    def state_bytes(self, customer_id: str) -> bytes | None:
        state = self._state(customer_id)
        return None if state is None else state.to_bytes()


class PartitionDriver:
    """One partition: an engine and the partition's event-time clock, as ``Replay(partitions=N)`` drives them."""

    def __init__(self, engine: CustomerEngine, settle_ms: int) -> None:
        self.engine = engine
        self.clock = PartitionClock(settle_ms)

    def feed(self, raw: bytes, key: bytes | None) -> Outcome:
        """One input message: its outcome, with the deadlines its event time settled for others."""
        return outcome_of(self.feed_fields(raw, key))

    def feed_fields(self, raw: bytes, key: bytes | None) -> Processed:
        """:meth:`feed` as the engine's tuple (the pipeline's form): its decisions list includes those fired."""
        processed = self.engine.process(raw, key)
        if processed[0] is not None or processed[8]:
            return processed  # a rejection, an erasure
        clock = self.clock
        customer_id = processed[1]
        assert customer_id is not None
        bound = clock.observe_due(customer_id, processed[9], processed[10])
        if bound is not None:
            decisions = processed[5]
            for due in clock.due(bound):
                fired, next_deadline = self.engine.advance(due, bound)
                decisions.extend(fired)
                clock.schedule_at(due, next_deadline)
        return processed

    def fire(self, before_ms: int) -> list[DecisionRecord]:
        """Settle every deadline before ``before_ms`` (wall clock on a quiet partition)."""
        decisions: list[DecisionRecord] = []
        clock = self.clock
        for due in clock.due(before_ms):
            fired, next_deadline = self.engine.advance(due, before_ms)
            decisions.extend(fired)
            clock.schedule_at(due, next_deadline)
        return decisions

    def restore(self, customer_id: str, watermark_ms: int | None, next_deadline_ms: int | None) -> None:
        """Schedule a stored customer's next deadline (the clock's own time is restored with :attr:`time_ms`)."""
        del watermark_ms  # the clock's time is stored with the partition, not derived from its customers
        self.clock.schedule_at(customer_id, next_deadline_ms)

    @property
    def time_ms(self) -> int | None:
        return self.clock.time_ms

    @time_ms.setter
    def time_ms(self, value: int | None) -> None:
        self.clock.time_ms = value
