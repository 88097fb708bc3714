"""Builders for tests and examples: a :class:`Scenario` feeds contract events through a :class:`Guard`.

Events are built as contract JSON and go through :func:`parse_event`, so scenarios exercise validation too.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson

from fatigue.engine import Guard, Step
from fatigue.events import Rejection, parse_event
from fatigue.policy import Policy, load_policy
from fatigue.state import CustomerState
from fatigue.timeutil import parse_iso_ms

POLICY_DIR = Path(__file__).resolve().parent.parent / "config" / "policies"
SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
# A Monday, 09:00 UTC: scenario times are offsets from here.
T0: int = parse_iso_ms("2026-11-02T09:00:00Z") or 0


def policy_named(name: str) -> Policy:
    """A shipped policy from config/policies (``default``, ``reg-f``, ``tcpa``)."""
    return load_policy(POLICY_DIR / f"{name}.toml")


def at(days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0, ms: int = 0) -> int:
    """An instant relative to :data:`T0`."""
    return T0 + int(days * DAY + hours * HOUR + minutes * MINUTE + seconds * SECOND) + ms


class Scenario:
    """One customer's timeline, event by event, with every effect recorded."""

    def __init__(self, policy: Policy | str = "default", customer_id: str = "cust-1") -> None:
        self.guard = Guard(policy_named(policy) if isinstance(policy, str) else policy)
        self.customer_id = customer_id
        self.state: CustomerState | None = None
        self.decisions: list[dict[str, Any]] = []
        self.violations: list[dict[str, Any]] = []
        self.rejections: list[Rejection] = []
        self._ids = itertools.count(1)

    def send(self, body: dict[str, Any]) -> Step:
        body.setdefault("customer_id", self.customer_id)
        body.setdefault("event_id", f"ev-{next(self._ids)}")
        parsed = parse_event(orjson.dumps(body))
        if isinstance(parsed, Rejection):
            self.rejections.append(parsed)
            return Step(self.state, rejection=parsed)
        step = self.guard.process(self.state, parsed)
        return self._record(step)

    def advance(self, now_ms: int) -> Step:
        assert self.state is not None
        return self._record(self.guard.advance(self.state, now_ms))

    def _record(self, step: Step) -> Step:
        self.state = step.state
        self.decisions.extend(step.decisions)
        self.violations.extend(step.violations)
        if step.rejection is not None:
            self.rejections.append(step.rejection)
        return step

    # ---- event builders (times in epoch ms)
    def contact(self, ts: int, channel: str, category: str = "marketing", **extra: Any) -> Step:
        return self.send({"type": "contact", "ts": ts, "channel": channel, "category": category, **extra})

    def call_ended(self, ts: int, duration_s: float, answered: bool = True, **extra: Any) -> Step:
        return self.send({"type": "call_ended", "ts": ts, "duration_s": duration_s, "answered": answered, **extra})

    def opened(self, ts: int, ref: str, machine: bool = False) -> Step:
        return self.send({"type": "email_opened", "ts": ts, "ref": ref, "machine": machine})

    def unsubscribe(self, ts: int, channel: str) -> Step:
        return self.send({"type": "unsubscribe", "ts": ts, "channel": channel})

    def complaint(self, ts: int, channel: str) -> Step:
        return self.send({"type": "complaint", "ts": ts, "channel": channel})

    def sms_stop(self, ts: int) -> Step:
        return self.send({"type": "sms_stop", "ts": ts})

    def preference(self, ts: int, channel: str | None = None, **fields: Any) -> Step:
        body: dict[str, Any] = {"type": "preference", "ts": ts, **fields}
        if channel is not None:
            body["channel"] = channel
        return self.send(body)

    # ---- views
    def current(self, channel: str, now_ms: int | None = None) -> dict[str, Any] | None:
        """The block decision in force on ``channel`` (at the watermark, or ``now_ms``), if any, as the state keeps
        it: without its evidence (the decision published, in :attr:`decisions`, has it)."""
        if self.state is None:
            return None
        for decision in self.guard.current_decisions(self.state, now_ms):
            if decision["channel"] == channel:
                return decision
        return None

    def last(self) -> dict[str, Any]:
        return self.decisions[-1]
