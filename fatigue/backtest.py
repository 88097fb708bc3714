"""Backtest: what a policy would have done to a history of contacts, as figures a person can read.

Each policy replays the history twice, in one pass, with the same engine as ``fatigue replay``:

* **before** is the history as it happened, replayed unchanged. Its sender violations are what the senders would
  have been told had the policy been on and they had ignored it (exactly ``fatigue replay --violations``).
* **after** is the history as it would have gone out had every sender honoured the guard. Events are processed in
  order; a counted contact that the engine reports as a violation (made on a channel blocked at that moment, or
  inside quiet hours) is *suppressed*: it is dropped from the after stream instead of being fed, so it never counts
  toward a cap, starts an unread streak or extends a block. Its outcomes (a ``call_ended`` or ``email_opened`` whose
  ``ref`` names it) and its redeliveries are dropped too. Reactions the history does not link to a contact
  (unsubscribe, complaint, SMS STOP, preferences, outcomes without ``ref``) are kept: nothing says they were caused
  by a suppressed contact, so the after world is, if anything, pessimistic. Replaying the after stream with
  ``fatigue replay`` gives the after world's decisions exactly, and no violations.

Figures are about **counted contacts** (the categories the policy counts: marketing by default), the only ones a
policy can block. Weeks are ISO weeks in UTC (Monday 00:00). The module is pure: it reads lines, no clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from fatigue.engine import Guard
from fatigue.events import CHANNELS, Event, Rejection, parse_event
from fatigue.policy import Policy
from fatigue.state import CustomerState
from fatigue.timeutil import format_ms

DAY_MS: Final = 86_400_000
WEEK_MS: Final = 7 * DAY_MS
_MONDAY_SHIFT_MS: Final = 3 * DAY_MS  # 1970-01-01 was a Thursday
DEFAULT_UNREAD_DEADLINE_MS: Final = 72 * 3_600_000  # for the unread rate when a policy has no unread rule
NO_SENDER: Final = "(none)"
SCHEMA: Final = "fatigue.backtest/1"


def week_start_ms(ts_ms: int) -> int:
    """Monday 00:00 UTC of the ISO week ``ts_ms`` falls in."""
    return (ts_ms + _MONDAY_SHIFT_MS) // WEEK_MS * WEEK_MS - _MONDAY_SHIFT_MS


def rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass
class Outcomes:
    """Negative reactions among counted contacts, linked by ``ref``.

    Short hang-up rate: answered calls shorter than the policy's threshold per call with a reported
    ``call_ended``. Unread rate: marketing emails with no human open at or before their deadline per email whose
    deadline passed before the end of the history (later ones are still pending and left out).
    """

    calls: int = 0
    calls_with_outcome: int = 0
    answered: int = 0
    short_hangups: int = 0
    emails: int = 0
    emails_settled: int = 0
    unread: int = 0

    @property
    def short_hangup_rate(self) -> float | None:
        return rate(self.short_hangups, self.calls_with_outcome)

    @property
    def unread_rate(self) -> float | None:
        return rate(self.unread, self.emails_settled)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "calls_with_outcome": self.calls_with_outcome,
            "answered": self.answered,
            "short_hangups": self.short_hangups,
            "short_hangup_rate": self.short_hangup_rate,
            "emails": self.emails,
            "emails_settled": self.emails_settled,
            "unread": self.unread,
            "unread_rate": self.unread_rate,
        }


@dataclass
class WeekDistribution:
    """Counted contacts per customer per week, over every customer-week that had one before or after.

    ``histogram`` maps a number of contacts to the number of customer-weeks with that many; in the after world a
    customer-week whose contacts were all suppressed counts as 0.
    """

    customer_weeks: int = 0
    histogram: dict[int, int] = field(default_factory=dict)
    mean: float | None = None
    p50: int | None = None
    p90: int | None = None
    p99: int | None = None
    max: int | None = None

    @classmethod
    def of(cls, counts: list[int]) -> WeekDistribution:
        if not counts:
            return cls()
        ordered = sorted(counts)
        size = len(ordered)

        def percentile(percent: int) -> int:
            # nearest rank, in integers: the smallest value with at least percent% of customer-weeks at or below it
            return ordered[max(0, -(-percent * size // 100) - 1)]

        return cls(
            customer_weeks=size,
            histogram=dict(sorted(Counter(ordered).items())),
            mean=sum(ordered) / size,
            p50=percentile(50),
            p90=percentile(90),
            p99=percentile(99),
            max=ordered[-1],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "customer_weeks": self.customer_weeks,
            "histogram": {str(key): value for key, value in self.histogram.items()},
            "mean": self.mean,
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
            "max": self.max,
        }


@dataclass
class World:
    """One replay of the history: what was fed, accepted, and what the contacts and their outcomes were."""

    events: int = 0  # lines fed to this world
    accepted: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    contacts: int = 0  # accepted contacts of every category
    counted: int = 0  # accepted counted contacts
    counted_by_channel: Counter[str] = field(default_factory=Counter)
    customers: int = 0  # customers with at least one counted contact
    per_week: WeekDistribution = field(default_factory=WeekDistribution)
    weekly_volume: dict[int, int] = field(default_factory=dict)  # week start (ms) -> counted contacts
    outcomes: Outcomes = field(default_factory=Outcomes)
    decisions: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (action, reason, channel)
    first_ms: int | None = None
    last_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "accepted": self.accepted,
            "rejections": dict(sorted(self.rejections.items())),
            "contacts": self.contacts,
            "counted_contacts": self.counted,
            "counted_by_channel": {channel: self.counted_by_channel[channel] for channel in CHANNELS},
            "customers": self.customers,
            "per_customer_week": self.per_week.to_dict(),
            "weekly_volume": [{"week": format_ms(week), "contacts": n} for week, n in self.weekly_volume.items()],
            "outcomes": self.outcomes.to_dict(),
            "decisions": _records(self.decisions, ("action", "reason", "channel")),
            "first": format_ms(self.first_ms) if self.first_ms is not None else None,
            "last": format_ms(self.last_ms) if self.last_ms is not None else None,
        }


@dataclass
class PolicyBacktest:
    """Everything one policy would have done to the history."""

    label: str
    version: str
    description: str
    counted_categories: tuple[str, ...]
    before: World
    after: World
    suppressed: int = 0
    suppressed_by_reason_channel: Counter[tuple[str, str]] = field(default_factory=Counter)
    suppressed_by_rule: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rule_id, reason)
    suppressed_by_sender: Counter[str] = field(default_factory=Counter)
    suppressed_by_campaign: Counter[str] = field(default_factory=Counter)
    outcomes_dropped: int = 0  # call_ended / email_opened referring to a suppressed contact
    redeliveries_dropped: int = 0  # the same event id as a suppressed contact, re-sent
    customers_protected: int = 0  # customers with at least one suppressed contact
    violations: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)  # (sender, kind, reason, channel)

    @property
    def suppressed_rate(self) -> float | None:
        return rate(self.suppressed, self.before.counted)

    @property
    def protected_rate(self) -> float | None:
        return rate(self.customers_protected, self.before.customers)

    @property
    def violations_total(self) -> int:
        return sum(self.violations.values())

    def violations_by_sender(self) -> list[tuple[str, Counter[str]]]:
        """``(sender, Counter(kind))`` with the most violating sender first."""
        senders: dict[str, Counter[str]] = {}
        for (sender, kind, _reason, _channel), count in self.violations.items():
            senders.setdefault(sender, Counter())[kind] += count
        return sorted(senders.items(), key=lambda item: (-sum(item[1].values()), item[0]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "policy_version": self.version,
            "description": self.description,
            "counted_categories": list(self.counted_categories),
            "suppressed": self.suppressed,
            "suppressed_rate": self.suppressed_rate,
            "suppressed_by_reason_channel": _records(self.suppressed_by_reason_channel, ("reason", "channel")),
            "suppressed_by_rule": _records(self.suppressed_by_rule, ("rule_id", "reason")),
            "suppressed_by_sender": _records(self.suppressed_by_sender, ("sender",)),
            "suppressed_by_campaign": _records(self.suppressed_by_campaign, ("campaign",)),
            "outcomes_dropped": self.outcomes_dropped,
            "redeliveries_dropped": self.redeliveries_dropped,
            "customers": self.before.customers,
            "customers_protected": self.customers_protected,
            "customers_protected_rate": self.protected_rate,
            "sender_violations": self.violations_total,
            "sender_violations_by": _records(self.violations, ("sender", "kind", "reason", "channel")),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
        }


@dataclass
class Backtest:
    """The backtest of one history under one or more policies, in the order given."""

    history: str
    policies: list[PolicyBacktest]

    def to_dict(self) -> dict[str, Any]:
        first = self.policies[0].before if self.policies else World()
        return {
            "schema": SCHEMA,
            "history": self.history,
            "first": format_ms(first.first_ms) if first.first_ms is not None else None,
            "last": format_ms(first.last_ms) if first.last_ms is not None else None,
            "policies": [result.to_dict() for result in self.policies],
        }


def _records(counter: Counter[Any], names: tuple[str, ...]) -> list[dict[str, Any]]:
    """A counter as JSON records, largest first (ties by key, so the output is deterministic)."""
    rows = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    out: list[dict[str, Any]] = []
    for key, count in rows:
        values = key if isinstance(key, tuple) else (key,)
        out.append({**dict(zip(names, values, strict=True)), "count": count})
    return out


class _Tally:
    """Collects one world's contact figures as events are accepted."""

    def __init__(self, policy: Policy) -> None:
        self.counted_categories = policy.counted_categories
        self.threshold_s = policy.hangup_threshold_s
        self.deadline_ms = policy.unread.deadline_ms if policy.unread is not None else DEFAULT_UNREAD_DEADLINE_MS
        self.world = World()
        self.customer_weeks: Counter[tuple[str, int]] = Counter()
        self.weekly: Counter[int] = Counter()
        self.customers: set[str] = set()
        # (customer, contact event id) -> outcome: None (none yet), "unanswered", "short", "answered"
        self.calls: dict[tuple[str, str], str | None] = {}
        # (customer, contact event id) -> [deadline_ms, read]
        self.emails: dict[tuple[str, str], list[Any]] = {}

    def accept(self, event: Event) -> None:
        world = self.world
        world.accepted += 1
        ts = event.ts_ms
        if world.first_ms is None or ts < world.first_ms:
            world.first_ms = ts
        if world.last_ms is None or ts > world.last_ms:
            world.last_ms = ts
        kind = event.type
        if kind == "contact":
            world.contacts += 1
            if event.category not in self.counted_categories:
                return
            channel = event.channel or ""
            world.counted += 1
            world.counted_by_channel[channel] += 1
            customer = event.customer_id
            self.customers.add(customer)
            week = week_start_ms(ts)
            self.customer_weeks[(customer, week)] += 1
            self.weekly[week] += 1
            key = (customer, event.event_id)
            if channel == "call":
                self.calls.setdefault(key, None)
            elif channel == "email" and event.category == "marketing":
                self.emails.setdefault(key, [ts + self.deadline_ms, False])
        elif kind == "call_ended" and event.ref is not None:
            key = (event.customer_id, event.ref)
            if key in self.calls and self.calls[key] is None:
                if not event.answered:
                    self.calls[key] = "unanswered"
                else:
                    self.calls[key] = "short" if event.duration_s < self.threshold_s else "answered"
        elif kind == "email_opened" and not event.machine and event.ref is not None:
            entry = self.emails.get((event.customer_id, event.ref))
            if entry is not None and ts <= entry[0]:
                entry[1] = True

    def finish(self, end_ms: int | None) -> World:
        world = self.world
        world.customers = len(self.customers)
        world.weekly_volume = dict(sorted(self.weekly.items()))
        outcomes = world.outcomes
        outcomes.calls = len(self.calls)
        for outcome in self.calls.values():
            if outcome is None:
                continue
            outcomes.calls_with_outcome += 1
            if outcome != "unanswered":
                outcomes.answered += 1
            if outcome == "short":
                outcomes.short_hangups += 1
        outcomes.emails = len(self.emails)
        for deadline, read in self.emails.values():
            # settled as the engine settles at the end of a replay: deadlines strictly before the newest event
            if end_ms is not None and deadline < end_ms:
                outcomes.emails_settled += 1
                if not read:
                    outcomes.unread += 1
        return world


class _Driver:
    """Parse + :class:`Guard` over one stream, keeping every customer's state (the loop of ``Replay.feed``)."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.states: dict[str, CustomerState] = {}
        self.tally = _Tally(guard.policy)
        self.newest_ms: int | None = None

    def reject(self, reason: str) -> None:
        self.tally.world.rejections[reason] += 1

    def finish(self) -> World:
        """Settle unread deadlines before the newest event time, as ``fatigue replay`` does by default."""
        world = self.tally.world
        if self.newest_ms is not None:
            for state in self.states.values():
                if state.pending:
                    for decision in self.guard.advance(state, self.newest_ms).decisions:
                        world.decisions[(decision["action"], decision["reason"], decision["channel"])] += 1
        return self.tally.finish(self.newest_ms)

    def accepted(self, event: Event, decisions: list[dict[str, Any]]) -> None:
        if self.newest_ms is None or event.ts_ms > self.newest_ms:
            self.newest_ms = event.ts_ms
        world = self.tally.world
        for decision in decisions:
            world.decisions[(decision["action"], decision["reason"], decision["channel"])] += 1
        self.tally.accept(event)


def backtest_policy(
    policy: Policy,
    lines: Iterable[bytes],
    *,
    label: str | None = None,
    keep: Callable[[bytes], None] | None = None,
) -> PolicyBacktest:
    """Backtest one policy on raw JSON lines (history order). ``keep`` receives every line of the after stream."""
    before = _Driver(Guard(policy))
    after = _Driver(Guard(policy))
    result = PolicyBacktest(
        label=label or policy.version,
        version=policy.version,
        description=policy.description,
        counted_categories=tuple(sorted(policy.counted_categories)),
        before=before.tally.world,
        after=after.tally.world,
    )
    suppressed_ids: set[tuple[str, str]] = set()
    protected: set[str] = set()
    max_bytes = policy.max_event_bytes
    for raw in lines:
        before.tally.world.events += 1
        parsed = parse_event(raw, max_bytes=max_bytes)
        if isinstance(parsed, Rejection):
            before.reject(parsed.reason)
            after.tally.world.events += 1
            after.reject(parsed.reason)
            if keep is not None:
                keep(raw)
            continue
        _feed_before(before, parsed, result)
        customer = parsed.customer_id
        if parsed.type == "contact" and (customer, parsed.event_id) in suppressed_ids:
            result.redeliveries_dropped += 1
            continue
        if parsed.type in ("call_ended", "email_opened") and (customer, parsed.ref) in suppressed_ids:
            result.outcomes_dropped += 1
            continue
        if _feed_after(after, parsed, result):
            suppressed_ids.add((customer, parsed.event_id))
            protected.add(customer)
            continue
        after.tally.world.events += 1
        if keep is not None:
            keep(raw)
    result.before = before.finish()
    result.after = after.finish()
    result.customers_protected = len(protected)
    _week_distributions(before.tally, after.tally)
    return result


def _feed_before(driver: _Driver, event: Event, result: PolicyBacktest) -> None:
    step = driver.guard.process(driver.states.get(event.customer_id), event)
    if step.rejection is not None:
        driver.reject(step.rejection.reason)
        return
    if step.state is not None:
        driver.states[event.customer_id] = step.state
    for violation in step.violations:
        sender = violation["sender"] or NO_SENDER
        result.violations[(sender, violation["kind"], violation["reason"], violation["channel"])] += 1
    driver.accepted(event, step.decisions)


def _feed_after(driver: _Driver, event: Event, result: PolicyBacktest) -> bool:
    """Feed one event to the after world; True when it is a contact the guard would have suppressed."""
    customer = event.customer_id
    state = driver.states.get(customer)
    # only a counted contact can be a violation; keep a copy of the state to undo it if it is one
    snapshot = (
        state.to_bytes()
        if state is not None and event.type == "contact" and event.category in driver.guard.policy.counted_categories
        else None
    )
    step = driver.guard.process(state, event)
    if step.rejection is not None:
        driver.reject(step.rejection.reason)
        return False
    if step.violations:
        # the contact never happened: restore the state as it was before it (or forget a brand-new customer)
        if snapshot is not None:
            driver.states[customer] = CustomerState.from_bytes(snapshot)
        first = step.violations[0]  # a "blocked" violation comes before a "quiet_hours" one
        channel = first["channel"]
        result.suppressed += 1
        result.suppressed_by_reason_channel[(first["reason"], channel)] += 1
        result.suppressed_by_rule[(first["rule_id"], first["reason"])] += 1
        result.suppressed_by_sender[first["sender"] or NO_SENDER] += 1
        result.suppressed_by_campaign[first["campaign"] or NO_SENDER] += 1
        return True
    if step.state is not None:
        driver.states[customer] = step.state
    driver.accepted(event, step.decisions)
    return False


def _week_distributions(before: _Tally, after: _Tally) -> None:
    keys = set(before.customer_weeks) | set(after.customer_weeks)
    before.world.per_week = WeekDistribution.of([before.customer_weeks[key] for key in keys])
    after.world.per_week = WeekDistribution.of([after.customer_weeks[key] for key in keys])
