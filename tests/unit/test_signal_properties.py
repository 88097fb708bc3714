"""Property tests: short hang-ups and unread mail against a brute-force recount of the whole history.

Like tests/unit/test_engine_properties.py for caps: the oracle keeps every accepted event forever and works the
block in force out from scratch after every event, by the issue's sentences; the engine keeps trimmed, sorted
signals, settles deadlines as event time passes and corrects settled mail when a late open arrives. Histories
mix in-order and late events (within and beyond the 24h grace), duplicates, unanswered calls, machine opens,
opens for unknown mail, and opens delivered before the mail they are for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fatigue.engine import Guard
from fatigue.events import Rejection, parse_event
from fatigue.policy import Policy
from fatigue.state import CustomerState
from fatigue.testing import DAY, HOUR, MINUTE, T0, policy_named
from fatigue.timeutil import format_ms

DEFAULT = policy_named("default")
# only the signal rules: no caps, so every block on call (email) comes from hang-ups (unread)
HANGUPS = Policy(version="hangups", hangup_rules=DEFAULT.hangup_rules)
UNREAD = Policy(version="unread", unread=DEFAULT.unread)
GRACE = DEFAULT.late_grace_ms


@dataclass
class Customer:
    """What every accepted event did, kept forever; ``accepts`` mirrors the engine's duplicate and late rules."""

    watermark: int | None = None
    seen: set[str] = field(default_factory=set)

    def accepts(self, event_id: str, ts: int) -> bool:
        if event_id in self.seen:
            return False
        return self.watermark is None or ts >= self.watermark - GRACE

    def accept(self, event_id: str, ts: int) -> None:
        self.seen.add(event_id)
        self.watermark = ts if self.watermark is None else max(self.watermark, ts)


def _process(guard: Guard, state: CustomerState | None, body: dict[str, object]):
    event = parse_event(orjson.dumps({"customer_id": "c", **body}))
    assert not isinstance(event, Rejection), event
    step = guard.process(state, event)
    if step.state is not None:
        # every other event goes through the bytes a worker's table would hold
        restored = CustomerState.from_bytes(step.state.to_bytes())
        assert restored == step.state
    return step


def _current(guard: Guard, state: CustomerState, channel: str) -> dict | None:
    return next((d for d in guard.current_decisions(state) if d["channel"] == channel), None)


# ---------------------------------------------------------------------------------------------- short hang-ups

hangup_event = st.tuples(
    st.integers(0, 12 * DAY) | st.sampled_from([0, 3 * DAY, 30 * DAY, 30 * DAY + 1]),  # clock moves on
    st.sampled_from(["call_ended", "call_ended", "call_ended", "contact"]),
    st.sampled_from([0, 5, 29, 29.999, 30, 30.001, 45, 600]),  # duration_s
    st.booleans() | st.just(True),  # answered
    st.just(0) | st.integers(0, 30 * HOUR),  # lateness: within the grace or beyond it
    st.booleans(),  # a redelivery of an earlier event
)


def _hangup_winner(hangups: list[int], now: int) -> tuple[int, str] | None:
    """(until, rule_id) by the issue: any short hang-up blocks calls 3d from it; one that is the second within
    30d ((h - 30d, h]) blocks calls 30d from it. The latest ``until`` wins; ties go to the policy's first rule."""
    best: tuple[int, str] | None = None
    for rule in HANGUPS.hangup_rules:
        for at in hangups:
            inside = sum(1 for other in hangups if at - rule.window_ms < other <= at)
            until = at + rule.block_ms
            if inside >= rule.count and until > now and (best is None or until > best[0]):
                best = (until, rule.rule_id)
    return best


@settings(max_examples=300, deadline=None)
@given(st.lists(hangup_event, min_size=1, max_size=50))
@example(  # the second hang-up exactly 30d after the first: outside (h - 30d, h], so only the 3d block
    [(0, "call_ended", 10, True, 0, False), (30 * DAY, "call_ended", 10, True, 0, False)]
)
@example(  # a late hang-up that makes an earlier one the second within 30d
    [
        (0, "call_ended", 10, True, 0, False),
        (20 * HOUR, "call_ended", 60, True, 0, False),
        (29 * DAY, "call_ended", 5, True, 10 * HOUR, False),
    ]
)
def test_short_hangups_match_a_brute_force_recount(history):
    guard = Guard(HANGUPS)
    customer = Customer()
    short: list[int] = []
    state: CustomerState | None = None
    clock = T0
    sent: list[dict[str, object]] = []
    for index, (advance, kind, duration_s, answered, lateness, resend) in enumerate(history):
        clock += advance
        if resend and sent:
            body = sent[len(sent) // 2]
        elif kind == "contact":
            body = {"type": "contact", "event_id": f"e{index}", "ts": clock - lateness, "channel": "call"}
        else:
            body = {
                "type": "call_ended",
                "event_id": f"e{index}",
                "ts": clock - lateness,
                "duration_s": duration_s,
                "answered": answered,
            }
        sent.append(body)
        event_id, ts = str(body["event_id"]), int(body["ts"])  # type: ignore[call-overload]
        accepted = customer.accepts(event_id, ts)
        blocked_then = _hangup_winner([at for at in short if at <= ts], ts) is not None
        step = _process(guard, state, body)
        state = step.state
        if not accepted:
            assert step.rejection is not None and step.rejection.reason in ("duplicate", "late")
            continue
        assert step.rejection is None
        customer.accept(event_id, ts)
        if body["type"] == "call_ended" and body["answered"] and float(body["duration_s"]) < 30:  # type: ignore[arg-type]
            short.append(ts)
        if body["type"] == "contact":
            # a marketing call while a hang-up block is in force is the sender's violation, late or not
            assert [v["kind"] for v in step.violations] == (["blocked"] if blocked_then else [])
        assert state is not None
        expected = _hangup_winner(short, customer.watermark)  # type: ignore[arg-type]
        got = _current(guard, state, "call")
        if expected is None:
            assert got is None, got
            continue
        assert got is not None, expected
        assert (got["until_ms"], got["rule_id"], got["reason"]) == (*expected, "short_hangups")
        assert got["suggest"] == "email"  # nothing else is blocked or pressured: the least intrusive channel
        for decision in step.decisions:
            assert decision["decided_at_ms"] == ts and decision["cause_event_id"] == event_id


# ---------------------------------------------------------------------------------------------- unread mail

unread_event = st.tuples(
    st.integers(0, 2 * DAY) | st.sampled_from([0, 72 * HOUR, 72 * HOUR + 1, 10 * MINUTE]),  # clock moves on
    st.sampled_from(["email", "email", "email", "open", "open", "open", "machine_open", "service_email", "open_first"]),
    st.integers(0, 40),  # which earlier email an open is for (modulo the emails sent so far; beyond: unknown)
    st.just(0) | st.integers(0, 30 * HOUR),  # lateness
    st.sampled_from([False, False, False, True]),  # the open is sent exactly at its email's deadline
    st.booleans(),  # a redelivery of an earlier event
)


def _unread_winner(emails: dict[str, int], opens: dict[str, list[int]], now: int) -> tuple[int, str, str] | None:
    """(until, rule_id, email id) by the issue: a marketing email is unread when no human open for it is at or
    before its deadline (sent + 72h); emails settle in deadline order once event time is past the deadline; five
    unread in a row (an open resets the streak) block email 30d from the deadline of the email completing the
    streak, the latest such email counting."""
    rule = UNREAD.unread
    assert rule is not None
    settled = sorted(
        (sent + rule.deadline_ms, event_id) for event_id, sent in emails.items() if sent + rule.deadline_ms < now
    )
    streak = 0
    block: tuple[int, str, str] | None = None
    for deadline, event_id in settled:
        read = any(at <= deadline for at in opens.get(event_id, ()))
        streak = 0 if read else streak + 1
        if streak >= rule.streak:
            block = (deadline + rule.block_ms, rule.rule_id, event_id)
    return block if block is not None and block[0] > now else None


@settings(max_examples=300, deadline=None)
@given(st.lists(unread_event, min_size=1, max_size=60))
@example(  # five emails whose opens were delivered just before them: all read
    [(HOUR, "open_first", 0, 0, True, False)] * 5 + [(4 * DAY, "email", 0, 0, False, False)]
)
@example(  # emails sent at one instant: the streaks after the first end its block at the same instant
    [(0, "email", 0, 0, False, False)] * 22 + [(1, "email", 0, 0, False, False), (3 * DAY, "email", 0, 0, False, False)]
)
def test_unread_mail_matches_a_brute_force_recount(history):
    guard = Guard(UNREAD)
    customer = Customer()
    emails: dict[str, int] = {}  # accepted marketing emails: event id -> sent at
    sent_emails: list[tuple[str, int]] = []  # every email sent (accepted or not), for opens to refer to
    opens: dict[str, list[int]] = {}  # accepted human opens by the email they are for
    published: dict[str, dict] = {}  # the last decision published per channel, with its evidence
    state: CustomerState | None = None
    clock = T0
    sent: list[dict[str, object]] = []
    for index, (advance, kind, which, lateness, at_deadline, resend) in enumerate(history):
        clock += advance
        event_id = f"e{index}"
        bodies: list[dict[str, object]] = []
        if resend and sent:
            bodies.append(sent[len(sent) // 2])
        elif kind == "open_first":
            # the open is delivered before the email it is for (two producers, no order between them)
            bodies.append({"type": "email_opened", "event_id": f"{event_id}-open", "ts": clock, "ref": event_id})
            email_at = clock - min(lateness, 72 * HOUR) if at_deadline else clock - 72 * HOUR - 1
            bodies.append({"type": "contact", "event_id": event_id, "ts": email_at, "channel": "email"})
            sent_emails.append((event_id, email_at))
        elif kind in ("email", "service_email"):
            body = {"type": "contact", "event_id": event_id, "ts": clock - lateness, "channel": "email"}
            body["category"] = "marketing" if kind == "email" else "service"
            if kind == "email":
                sent_emails.append((event_id, clock - lateness))
            bodies.append(body)
        else:
            ref, ts = f"unknown-{which}", clock - lateness
            if sent_emails and which < 2 * len(sent_emails):
                ref, email_at = sent_emails[which % len(sent_emails)]
                if at_deadline:
                    ts = email_at + 72 * HOUR
            bodies.append(
                {"type": "email_opened", "event_id": event_id, "ts": ts, "ref": ref, "machine": kind == "machine_open"}
            )
        for body in bodies:
            sent.append(body)
            state = _check_unread_step(guard, state, customer, emails, opens, published, body)


def _check_unread_step(
    guard: Guard,
    state: CustomerState | None,
    customer: Customer,
    emails: dict[str, int],
    opens: dict[str, list[int]],
    published: dict[str, dict],
    body: dict[str, object],
) -> CustomerState | None:
    event_id, ts = str(body["event_id"]), int(body["ts"])  # type: ignore[call-overload]
    accepted = customer.accepts(event_id, ts)
    step = _process(guard, state, body)
    state = step.state
    published.update((decision["channel"], decision) for decision in step.decisions)
    if not accepted:
        assert step.rejection is not None and step.rejection.reason in ("duplicate", "late")
        return state
    assert step.rejection is None
    customer.accept(event_id, ts)
    if body["type"] == "contact" and body.get("category", "marketing") == "marketing":
        emails[event_id] = ts
    elif body["type"] == "email_opened" and not body.get("machine"):
        opens.setdefault(str(body["ref"]), []).append(ts)
    assert state is not None
    expected = _unread_winner(emails, opens, customer.watermark)  # type: ignore[arg-type]
    got = _current(guard, state, "email")
    if expected is None:
        assert got is None, (got, emails, opens)
        return state
    assert got is not None, (expected, emails, opens)
    until, rule_id, email_id = expected
    assert (got["until_ms"], got["rule_id"], got["reason"]) == (until, rule_id, "unread")
    # the state keeps the decision without its evidence, which was published with it
    assert "evidence" not in got and {**got, "evidence": published["email"]["evidence"]} == published["email"]
    (sent,) = published["email"]["evidence"]["rules"]
    assert (sent["rule_id"], sent["until"]) == (rule_id, format_ms(until)) and sent["streak"] >= 5
    # rendered again from the facts kept, the evidence names the email completing the latest streak (the one
    # published may name an earlier one: a later streak with the same end is no new decision)
    (evidence,) = guard.evidence(state, "email", customer.watermark)["rules"]  # type: ignore[arg-type]
    assert (evidence["rule_id"], evidence["until"]) == (rule_id, format_ms(until))
    assert evidence["email_event_id"] == email_id
    assert evidence["streak"] >= 5
    return state
