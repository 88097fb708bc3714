"""Per-customer state: raw, trimmed facts (never pre-aggregated counts), serialised compactly with orjson.

Keeping raw timestamps serves every window length from one sorted log, gives the exact instant a block ends and
survives a policy change without a migration. Everything is bounded: entries older than the longest window are
trimmed as event time advances, and hot keys are capped with a counter of what was dropped (``trimmed``).
"""

from __future__ import annotations

from typing import Any

import orjson

from fatigue.events import CHANNELS
from fatigue.timeutil import format_ms, format_optional_ms

# Scopes for customer caps: one per channel (index as in events.CHANNELS) plus all channels together.
SCOPE_ALL = 3

# Fact layouts (lists, so they serialise as short JSON arrays):
#   opt_out:       [ts_ms, opted_out: bool, source: "unsubscribe" | "sms_stop" | "opt_out"]
#   customer cap:  [ts_ms, count | None, window_ms | None]      (None: cleared by the customer)
#   quiet hours:   [ts_ms, start_minute | None, end_minute | None]
#   timezone:      [ts_ms, name | None]
#   pending email: [deadline_ms, contact_event_id, opened: 0 | 1]
#   early opens:   {contact_event_id: opened_at_ms}, human opens delivered before the email they are for
#   lifted opt-out: [channel, opted_out_at_ms, lifted_at_ms, source], kept for the late grace after the opt-in
#   superseded signal: [kind (0-2: complaint on that channel, 3: conversation), at_ms, superseded_at_ms]: an earlier
#                  complaint or conversation than the one kept, for the late grace after the newer one
#   superseded fact: [kind (0-2: quiet hours of that channel, 3: time zone), fact, superseded_at_ms]: an earlier
#                  quiet hours or time zone than the one kept, for the late grace after the newer one
#   unread block:  [since_ms, until_ms, cause_event_id, streak]
#   settled email: [deadline_ms, contact_event_id, streak after it (0: opened in time)], kept while an open for it
#                  can still be accepted; ``unread_prior`` is the unread block the forgotten ones gave
#   emitted:       [blocked_since_ms, decision]  (the last decision sent for a channel, without its evidence)
#                  serialised as [blocked_since_ms, [action, reason, rule, rule_id, until_ms, null,
#                  policy_version, decided_at_ms, cause_event_id(, suggest)]]: the customer, the channel and the
#                  rendered instants are derived again on load (see _pack_decision); the null is where earlier
#                  versions stored the evidence


def json_bytes(value: Any) -> bytes:
    """``orjson.dumps(value)`` in a bytes object of its own size. orjson (3.13) returns its output buffer as is: a
    200-byte document holds a 4 KiB allocation, a 14 KB one 0.5 MiB. Harmless for a line written at once, but the
    worker holds every output of its transactions in flight until they commit (measured: that was most of the
    Python engine's peak RSS, bench/README.md), so whatever the core returns to be kept is copied to its size."""
    return memoryview(orjson.dumps(value)).tobytes()


class CustomerState:
    """Everything the guard remembers about one pseudonymous customer."""

    __slots__ = (
        "complaints",
        "conversation_ms",
        "customer_caps",
        "customer_id",
        "early_opens",
        "emitted",
        "hangups",
        "ids",
        "lifted_opt_outs",
        "logs",
        "opt_outs",
        "pending",
        "quiet",
        "settled",
        "streak",
        "superseded_facts",
        "superseded_signals",
        "timezone",
        "trim_due_ms",
        "trimmed",
        "unread_block",
        "unread_prior",
        "watermark_ms",
    )

    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        self.watermark_ms: int | None = None
        self.logs: list[list[int]] = [[], [], []]
        self.ids: dict[str, int] = {}  # event_id -> ts, for de-duplication within the late grace
        self.hangups: list[int] = []
        self.conversation_ms: int | None = None
        self.complaints: list[int | None] = [None, None, None]
        self.opt_outs: list[list[Any] | None] = [None, None, None]
        self.lifted_opt_outs: list[list[Any]] = []  # so that a late contact made while opted out is a violation
        self.superseded_signals: list[list[int]] = []  # likewise for one made during an earlier complaint's block
        self.superseded_facts: list[list[Any]] = []  # and for its quiet hours and time zone of that instant
        self.customer_caps: list[list[Any] | None] = [None, None, None, None]
        self.quiet: list[list[Any] | None] = [None, None, None]
        self.timezone: list[Any] | None = None
        self.pending: list[list[Any]] = []
        # opens and contacts come from different producers with no order between them: an open whose email has
        # not arrived yet waits here (within the late grace) to be matched when it does
        self.early_opens: dict[str, int] = {}
        self.streak = 0
        self.unread_block: list[Any] | None = None
        self.settled: list[list[Any]] = []
        self.unread_prior: list[Any] | None = None
        self.emitted: list[list[Any] | None] = [None, None, None]
        self.trimmed = 0
        # Not serialised: an instant before which the engine's time-based trim has nothing to drop (0: unknown,
        # trim at the next chance). It lets the trim skip reading every part of a state that is not in memory
        # caches; a loaded state starts at 0, so it only ever saves work, never changes what is kept.
        self.trim_due_ms = 0

    def to_dict(self) -> dict[str, Any]:
        """A compact dict: empty parts are left out."""
        out: dict[str, Any] = {"c": self.customer_id, "w": self.watermark_ms}
        if any(self.logs):
            out["l"] = self.logs
        if self.ids:
            out["i"] = [value for pair in self.ids.items() for value in pair]
        if self.hangups:
            out["h"] = self.hangups
        if self.conversation_ms is not None:
            out["cv"] = self.conversation_ms
        if any(item is not None for item in self.complaints):
            out["cp"] = self.complaints
        if any(item is not None for item in self.opt_outs):
            out["o"] = self.opt_outs
        if self.lifted_opt_outs:
            out["lo"] = self.lifted_opt_outs
        if self.superseded_signals:
            out["ss"] = self.superseded_signals
        if self.superseded_facts:
            out["sf"] = self.superseded_facts
        if any(item is not None for item in self.customer_caps):
            out["cc"] = self.customer_caps
        if any(item is not None for item in self.quiet):
            out["q"] = self.quiet
        if self.timezone is not None:
            out["tz"] = self.timezone
        if self.pending:
            out["p"] = self.pending
        if self.early_opens:
            out["eo"] = [value for pair in self.early_opens.items() for value in pair]
        if self.streak:
            out["s"] = self.streak
        if self.unread_block is not None:
            out["ub"] = self.unread_block
        if self.settled:
            out["sd"] = self.settled
        if self.unread_prior is not None:
            out["up"] = self.unread_prior
        emitted = self.emitted
        if emitted[0] is not None or emitted[1] is not None or emitted[2] is not None:
            out["e"] = [None if record is None else [record[0], _pack_decision(record[1])] for record in emitted]
        if self.trimmed:
            out["t"] = self.trimmed
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CustomerState:
        state = cls(data["c"])
        state.watermark_ms = data.get("w")
        state.logs = data.get("l") or [[], [], []]
        flat = data.get("i") or []
        state.ids = dict(zip(flat[::2], flat[1::2], strict=True))
        state.hangups = data.get("h") or []
        state.conversation_ms = data.get("cv")
        state.complaints = data.get("cp") or [None, None, None]
        state.opt_outs = data.get("o") or [None, None, None]
        state.lifted_opt_outs = data.get("lo") or []
        state.superseded_signals = data.get("ss") or []
        state.superseded_facts = data.get("sf") or []
        state.customer_caps = data.get("cc") or [None, None, None, None]
        state.quiet = data.get("q") or [None, None, None]
        state.timezone = data.get("tz")
        state.pending = data.get("p") or []
        flat_opens = data.get("eo") or []
        state.early_opens = dict(zip(flat_opens[::2], flat_opens[1::2], strict=True))
        state.streak = data.get("s", 0)
        state.unread_block = data.get("ub")
        state.settled = data.get("sd") or []
        state.unread_prior = data.get("up")
        emitted = data.get("e")
        state.emitted = (
            [
                None if record is None else [record[0], _unpack_decision(record[1], state.customer_id, channel)]
                for channel, record in enumerate(emitted)
            ]
            if emitted
            else [None, None, None]
        )
        state.trimmed = data.get("t", 0)
        return state

    def to_bytes(self) -> bytes:
        return json_bytes(self.to_dict())

    @classmethod
    def from_bytes(cls, raw: bytes) -> CustomerState:
        return cls.from_dict(orjson.loads(raw))

    def next_deadline_ms(self) -> int | None:
        """The earliest pending unread deadline, for drivers that fire deadlines by timer."""
        return self.pending[0][0] if self.pending else None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CustomerState) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"CustomerState({self.to_dict()!r})"


def remembered(decision: dict[str, Any]) -> dict[str, Any]:
    """``decision`` as the state keeps it: without its evidence, which is published with it and never read again.

    The engine reads only the action, rule, reason and instants of a channel's last decision (to lift it, to skip
    an unchanged block, to judge a contact); the evidence is most of a decision's bytes.
    """
    kept = decision.copy()
    del kept["evidence"]
    return kept


def _pack_decision(decision: dict[str, Any]) -> list[Any]:
    """A stored decision without what the state already knows: its customer, channel and rendered ``until`` /
    ``decided_at`` are derived again by :func:`_unpack_decision`.

    The evidence's slot stays, as null: the positions are those of the states earlier versions wrote, which they
    can still read (a rollback), and it costs 5 bytes.
    """
    packed = [
        decision["action"],
        decision["reason"],
        decision["rule"],
        decision["rule_id"],
        decision["until_ms"],
        None,
        decision["policy_version"],
        decision["decided_at_ms"],
        decision["cause_event_id"],
    ]
    if "suggest" in decision:
        packed.append(decision["suggest"])
    return packed


def _unpack_decision(packed: list[Any] | dict[str, Any], customer_id: str, channel: int) -> dict[str, Any]:
    """The decision as the engine remembers it; one stored with its evidence by an earlier version loads without
    it, so that a restored old state behaves and compares as one written now."""
    if isinstance(packed, dict):
        # stored whole by an earlier version
        return {key: value for key, value in packed.items() if key != "evidence"}
    # the evidence's slot (5) is null, or the evidence an earlier version stored
    action, reason, rule, rule_id, until_ms, _, policy_version, decided_at_ms, cause_event_id = packed[:9]
    # the key order of the engine's decisions (less the evidence), so that equal decisions have equal bytes
    decision = {
        "customer_id": customer_id,
        "channel": CHANNELS[channel],
        "action": action,
        "reason": reason,
        "rule": rule,
        "rule_id": rule_id,
        "until": format_optional_ms(until_ms),
        "until_ms": until_ms,
        "policy_version": policy_version,
        "decided_at": format_ms(decided_at_ms),
        "decided_at_ms": decided_at_ms,
        "cause_event_id": cause_event_id,
    }
    if len(packed) > 9:
        decision["suggest"] = packed[9]
    return decision


def preferences_view(state: CustomerState) -> dict[str, Any]:
    """What a pre-send check needs of a customer's own wishes: time zone, quiet hours, caps, opt-outs.

    This is what goes to Redis at ``fatigue:prefs:{customer_id}``; it carries no personal data beyond the id.
    """
    channels = ("email", "sms", "call")
    quiet = {
        channel: {"start": f"{fact[1] // 60:02d}:{fact[1] % 60:02d}", "end": f"{fact[2] // 60:02d}:{fact[2] % 60:02d}"}
        for channel, fact in zip(channels, state.quiet, strict=True)
        if fact is not None and fact[1] is not None
    }
    caps = {
        scope: {"count": fact[1], "window_ms": fact[2]}
        for scope, fact in zip((*channels, "all"), state.customer_caps, strict=True)
        if fact is not None and fact[1] is not None
    }
    opt_out = {
        channel: fact[2] for channel, fact in zip(channels, state.opt_outs, strict=True) if fact is not None and fact[1]
    }
    return {
        "customer_id": state.customer_id,
        "timezone": state.timezone[1] if state.timezone is not None else None,
        "quiet_hours": quiet,
        "max_contacts": caps,
        "opted_out": opt_out,
    }
