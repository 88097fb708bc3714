"""The native core (the Rust crate in native/, built as ``fatigue._native``) as a drop-in for the offline replay and
for the pipeline's partitions.

``NativeReplay`` gives what :class:`fatigue.replay.Replay` (without partitions) gives, byte for byte: the same
decisions, violations, rejections, states and stats (tests/unit/test_native_parity.py runs both in lock step). The
Rust engine decides every event type but erasure, the common ones (contact, call_ended, email_opened) parsed by its
own fast parser. The rest goes through the Python core by the bridge below: lines the fast parser leaves alone are
parsed by :func:`fatigue.events.parse_event` (so every rejection is Python's own), and an erasure is applied by
:class:`fatigue.engine.Guard` to the customer's state serialised exactly as :class:`CustomerState` serialises it,
and read back. Quiet hours are placed in the
customer's time zone by Python's zoneinfo, so both cores read the same zone data.

``NativeEngine`` is :class:`fatigue.partition.PythonEngine` on the same engine and bridge, a
:class:`fatigue.partition.CustomerEngine` for one partition of the streaming pipeline, held equal to it (and to
``Replay(partitions=N)``) by tests/unit/test_partition.py. Its ``handle_run`` also routes a run of the pipeline's
input records (what :meth:`streams.task.PartitionTask.handle` does per record with the Python engine), held equal
to that loop by tests/unit/test_task.py.

The Python engine stays the oracle.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Final
from zoneinfo import ZoneInfo

import orjson

from fatigue._native_build import DIGEST_FILE, NO_NATIVE_ENV, native_source_digest
from fatigue.engine import Guard
from fatigue.events import Event, Rejection, parse_event
from fatigue.partition import (
    PREFERENCE_TYPES,
    DecisionRecord,
    Loader,
    Processed,
    decision_record,
    rejected,
    violation_record,
)
from fatigue.policy import Policy
from fatigue.replay import ReplayStats
from fatigue.state import CustomerState, json_bytes, preferences_view
from fatigue.timeutil import format_duration

_PACKAGE_DIR: Final = Path(__file__).resolve().parent
# what the native engine decides (the rest, erasure, is applied by the Python Guard on the serialised state)
_NATIVE_TYPES: Final = frozenset(
    {"contact", "call_ended", "email_opened", "unsubscribe", "complaint", "sms_stop", "preference"}
)


def _load() -> tuple[ModuleType | None, str | None]:
    """The extension module, or None and why it must not be used."""
    if os.environ.get(NO_NATIVE_ENV) == "1":
        return None, f"{NO_NATIVE_ENV}=1"
    try:
        from fatigue import _native  # type: ignore[attr-defined]
    except ImportError as error:
        return None, f"fatigue._native is not built ({error}); make venv builds it"
    crate = _PACKAGE_DIR.parent / "native"
    if crate.is_dir():  # a source tree: the build must be of these sources
        try:
            recorded = orjson.loads((_PACKAGE_DIR / DIGEST_FILE).read_bytes()).get("digest")
        except (OSError, orjson.JSONDecodeError):
            return None, f"fatigue/{DIGEST_FILE} is missing: rebuild with make venv"
        if recorded != native_source_digest(_PACKAGE_DIR.parent):
            return None, "native/ changed after fatigue._native was built: rebuild with make venv"
    return _native, None


_MODULE, UNAVAILABLE_REASON = _load()


def native_available() -> bool:
    return _MODULE is not None


def policy_json(policy: Policy) -> bytes:
    """What the native engine needs of a policy, with every rule text rendered here (the Python core's texts)."""
    channels = ("email", "sms", "call")

    def window(rule: Any) -> list[Any]:
        return [rule.window_ms, rule.limit, rule.rule_id, rule.text, format_duration(rule.window_ms)]

    complaint = policy.complaint
    unread = policy.unread
    conversation = policy.conversation
    quiet = policy.quiet_hours
    data = {
        "version": policy.version,
        "counted": [category in policy.counted_categories for category in ("marketing", "service", "transactional")],
        "late_grace_ms": policy.late_grace_ms,
        "late_grace_text": format_duration(policy.late_grace_ms),
        "max_event_bytes": policy.max_event_bytes,
        "max_contacts": policy.max_contacts_per_channel,
        "max_event_ids": policy.max_event_ids,
        "max_signals": policy.max_signals,
        "default_timezone": policy.default_timezone,
        "channel_caps": [[window(rule) for rule in policy.caps if rule.channel == name] for name in channels],
        "global_caps": [window(rule) for rule in policy.caps if rule.channel is None],
        "hangup_threshold_s": float(policy.hangup_threshold_s),
        "hangup_rules": [
            [rule.rule_id, rule.count, rule.window_ms, rule.block_ms, rule.text, format_duration(rule.window_ms)]
            for rule in policy.hangup_rules
        ],
        "hangup_suggest": policy.hangup_suggest,
        "unread": None
        if unread is None
        else [unread.rule_id, unread.deadline_ms, unread.streak, unread.block_ms, unread.text],
        "unread_suggest": policy.unread_suggest,
        "complaint": None
        if complaint is None
        else [
            complaint.rule_id,
            complaint.channel_block_ms,
            complaint.other_channels_block_ms,
            [[complaint.text(complained, blocked) for blocked in channels] for complained in channels],
        ],
        "conversation": None
        if conversation is None
        else [conversation.rule_id, float(conversation.min_duration_s), conversation.block_ms, conversation.text],
        "quiet_hours": None
        if quiet is None
        else [quiet.rule_id, quiet.start_minute, quiet.end_minute, [name in quiet.channels for name in channels]],
        "retention_ms": policy.contact_retention_ms,
        "hangup_retention_ms": policy.hangup_retention_ms,
    }
    return orjson.dumps(data)


def _prefs_tuple(prefs: dict[str, Any]) -> tuple[tuple[bool, Any], ...]:
    """A preference's fields as (present, value) pairs: a field present as null clears, an absent one keeps."""
    return tuple((name in prefs, prefs.get(name)) for name in ("opt_out", "max_contacts", "quiet_hours", "timezone"))


class _Bridge:
    """What the Rust replay asks of the Python core (see the module docstring)."""

    def __init__(self, guard: Guard, check_key: bool) -> None:
        self.guard = guard
        self.check_key = check_key
        self.max_bytes = guard.policy.max_event_bytes

    def parse(self, raw: bytes, key: bytes | None) -> tuple[Any, ...]:
        parsed = parse_event(raw, key, check_key=self.check_key, max_bytes=self.max_bytes)
        if isinstance(parsed, Rejection):
            return (0, parsed.reason, parsed.detail, parsed.event_id, parsed.customer_id)
        if parsed.type in _NATIVE_TYPES:
            return (
                1,
                parsed.type,
                parsed.event_id,
                parsed.customer_id,
                parsed.ts_ms,
                parsed.channel,
                parsed.category,
                parsed.sender,
                parsed.campaign,
                parsed.ref,
                parsed.duration_s,
                parsed.answered,
                parsed.machine,
                None if parsed.prefs is None else _prefs_tuple(parsed.prefs),
            )
        return (2, parsed.customer_id, parsed)

    def process(self, state_bytes: bytes | None, event: Event) -> tuple[Any, ...]:
        state = None if state_bytes is None else CustomerState.from_bytes(state_bytes)
        step = self.guard.process(state, event)
        rejection = step.rejection
        return (
            None if step.state is None else step.state.to_bytes(),
            [(json_bytes(d), d["action"] == "block", d["reason"], d["channel"]) for d in step.decisions],
            [(json_bytes(v), v["kind"], v["channel"]) for v in step.violations],
            None
            if rejection is None
            else (rejection.reason, rejection.detail, rejection.event_id, rejection.customer_id),
            step.erased,
            event.ts_ms,
        )

    @staticmethod
    def local_minute(ts_ms: int, zone: str) -> int:
        # the expression of Guard._quiet_rule_at, so that both cores place an instant alike
        local = datetime.fromtimestamp(ts_ms / 1000, ZoneInfo(zone))
        return local.hour * 60 + local.minute


class _PartitionBridge(_Bridge):
    """What the Rust partition (``NativePartition``) asks of the Python core besides the replay's bridge."""

    @staticmethod
    def prefs_view(state_bytes: bytes) -> bytes:
        """The customer's preferences view (after a preference, unsubscribe or sms_stop event)."""
        return json_bytes(preferences_view(CustomerState.from_bytes(state_bytes)))

    def process_records(self, state_bytes: bytes | None, event: Event) -> tuple[bool, bytes | None, tuple[Any, ...]]:
        """PythonEngine.process after parsing (an erasure): (rejected, the new state, NativePartition's outcome)."""
        state = None if state_bytes is None else CustomerState.from_bytes(state_bytes)
        step = self.guard.process(state, event)
        if step.rejection is not None:
            return True, None, rejected(step.rejection)
        new = step.state
        prefs = None
        if not step.erased and new is not None and event.type in PREFERENCE_TYPES:
            prefs = json_bytes(preferences_view(new))
        outcome = (
            None,
            event.customer_id,
            event.type,
            event.channel,
            event.category,
            [decision_record(decision) for decision in step.decisions],
            [violation_record(violation) for violation in step.violations],
            prefs,
            step.erased,
            None if step.erased or new is None else new.watermark_ms,
            None if step.erased or new is None else new.next_deadline_ms(),
        )
        return False, None if new is None else new.to_bytes(), outcome


class NativeStep:
    """One line's effects: decisions and violations as JSON bytes (== orjson.dumps of the Python core's dicts)."""

    __slots__ = ("decisions", "rejection", "violations")

    def __init__(self, decisions: list[bytes], violations: list[bytes], rejection: Rejection | None) -> None:
        self.decisions = decisions
        self.violations = violations
        self.rejection = rejection


class NativeReplay:
    """:class:`fatigue.replay.Replay` (without partitions) on the native engine; see the module docstring."""

    def __init__(self, guard: Guard, *, check_key: bool = False) -> None:
        if _MODULE is None:
            raise RuntimeError(f"the native core is not available: {UNAVAILABLE_REASON}")
        self.guard = guard
        self._replay = _MODULE.NativeReplay(policy_json(guard.policy), _Bridge(guard, check_key), check_key)

    def feed(self, raw: bytes, key: bytes | None = None) -> NativeStep:
        decisions, violations, rejection = self._replay.feed(raw, key)
        return NativeStep(decisions, violations, None if rejection is None else Rejection(*rejection))

    def feed_all(self, lines: list[bytes]) -> None:
        self._replay.feed_all(lines)

    def finish(self, flush_at_ms: int | None) -> list[bytes]:
        decisions: list[bytes] = self._replay.finish(flush_at_ms)
        return decisions

    def state_bytes(self, customer_id: str) -> bytes | None:
        state: bytes | None = self._replay.state_bytes(customer_id)
        return state

    def customers(self) -> list[str]:
        customers: list[str] = self._replay.customers()
        return customers

    @property
    def newest_ms(self) -> int | None:
        newest: int | None = self._replay.newest_ms
        return newest

    @property
    def stats(self) -> ReplayStats:
        events, accepted, rejections, decisions, violations = self._replay.counts()
        stats = ReplayStats(events=events, accepted=accepted)
        stats.rejections.update(dict(rejections))
        stats.decisions.update(dict(decisions))
        stats.violations.update(dict(violations))
        return stats


class NativeEngine:
    """:class:`fatigue.partition.CustomerEngine` on the native engine (see the module docstring): equal to
    :class:`fatigue.partition.PythonEngine` in every output and in the states it hands back."""

    def __init__(self, guard: Guard, loader: Loader, *, check_key: bool = True) -> None:
        if _MODULE is None:
            raise RuntimeError(f"the native core is not available: {UNAVAILABLE_REASON}")
        self.guard = guard
        self._partition = _MODULE.NativePartition(
            policy_json(guard.policy), _PartitionBridge(guard, check_key), loader, check_key
        )
        # the Rust method itself, not a wrapper calling it: the pipeline calls it for every input record
        self.process = self._partition.process  # type: ignore[method-assign]
        # a run of input records, routed in Rust: see NativePartition.handle_run and streams.task
        self.handle_run = self._partition.handle_run

    def process(self, raw: bytes, key: bytes | None) -> Processed:
        processed: Processed = self._partition.process(raw, key)
        return processed

    def advance(self, customer_id: str, now_ms: int) -> tuple[list[DecisionRecord], int | None]:
        advanced: tuple[list[DecisionRecord], int | None] = self._partition.advance(customer_id, now_ms)
        return advanced

    def take_dirty(self) -> list[tuple[str, bytes | None]]:
        changed: list[tuple[str, bytes | None]] = self._partition.take_dirty()
        return changed

    def evict(self, keep: int) -> int:
        evicted: int = self._partition.evict(max(keep, 0))
        return evicted

    def resident(self) -> int:
        resident: int = self._partition.resident()
        return resident

    def state_bytes(self, customer_id: str) -> bytes | None:
        state: bytes | None = self._partition.state_bytes(customer_id)
        return state
