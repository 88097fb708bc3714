"""The decision engine: ``Guard.process(state, event) -> Step`` and ``Guard.advance(state, now_ms) -> Step``.

Pure and deterministic: the only clock is event time. Faust, the offline replay and the tests are three drivers of
these two functions, so the same input gives the same decisions everywhere.

How a channel's decision is found: every rule that currently blocks the channel yields a candidate block with an
exact ``until`` (None: until lifted); the candidate with the latest ``until`` wins and every candidate is listed in
the evidence. A decision is emitted only when the winner changes (reason, rule or ``until``), or as ``allow`` when
the last block is lifted before its expiry. A block that simply reaches its ``until`` needs no message: consumers
honour ``until`` and Redis keys expire at that instant.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from datetime import datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from mypy_extensions import mypyc_attr

from fatigue.events import CHANNEL_INDEX, CHANNELS, Event, Rejection
from fatigue.policy import Policy
from fatigue.state import SCOPE_ALL, CustomerState, remembered
from fatigue.timeutil import format_duration, format_ms

EMAIL: Final = CHANNEL_INDEX["email"]
SMS: Final = CHANNEL_INDEX["sms"]
CALL: Final = CHANNEL_INDEX["call"]
ALL_CHANNEL_INDEXES: Final = (EMAIL, SMS, CALL)
_OPT_OUT_REASONS: Final = {"unsubscribe": "unsubscribe", "sms_stop": "sms_stop", "opt_out": "opt_out"}
_NEGATIVE_REACTIONS: Final = frozenset({"short_hangups", "unread"})
_MAX_EVIDENCE_TIMESTAMPS: Final = 10
# lifted opt-outs, superseded complaints/conversations, superseded quiet hours/zones: each kept for the late grace,
# at most this many of each kind per customer
_MAX_KEPT_FOR_GRACE: Final = 16
_CONVERSATION_SIGNAL: Final = 3  # the kind of a superseded conversation (0-2: a complaint on that channel)
_TIMEZONE_FACT: Final = 3  # the kind of a superseded time zone (0-2: quiet hours of that channel)
_TRIM_PERIOD_MS: Final = 3_600_000
_ERASED_AT: Final = 0  # the instant of an erased customer's opt-out: none kept (see _erase)


class Step:
    """What one event (or one advance of time) did: the new state and the effects to route.

    A plain class rather than a dataclass, like Event (see fatigue.events): one is built for every event.
    """

    __slots__ = ("decisions", "erased", "rejection", "state", "violations")

    def __init__(
        self,
        state: CustomerState | None,
        decisions: list[dict[str, Any]] | None = None,
        violations: list[dict[str, Any]] | None = None,
        rejection: Rejection | None = None,
        erased: bool = False,
    ) -> None:
        self.state = state
        self.decisions: list[dict[str, Any]] = [] if decisions is None else decisions
        self.violations: list[dict[str, Any]] = [] if violations is None else violations
        self.rejection = rejection
        # the customer was erased: drivers delete every derived record (decision keys without a decision in this
        # step, preferences) and store ``state`` (a minimal suppression) or delete it when None
        self.erased = erased

    def __repr__(self) -> str:
        return (
            f"Step(state={self.state!r}, decisions={self.decisions!r}, violations={self.violations!r}, "
            f"rejection={self.rejection!r}, erased={self.erased!r})"
        )


# A candidate block, as a plain tuple (cheaper to build than an object; most are never rendered):
#   (sort_key, until_ms, reason, rule_id, rule_text, render_kind, data)
# ``sort_key`` orders the latest ``until`` first (None = indefinite beats everything), then the policy's rule
# order, in one int (see _sort_key); ``_render(candidate)`` builds the candidate's entry of the evidence from
# ``data`` by ``render_kind`` (an int, not a function: a direct call when compiled), only when a decision is
# emitted.
_Candidate = tuple[int, int | None, str, str, str, int, Any]
_INDEFINITE: Final = 1 << 62
_NEVER: Final = 1 << 62  # an instant after any event time


def _sort_key(until_ms: int | None, order: int) -> int:
    # the same order as the pair (-until, order): orders are below 16, so they only break ties of until
    return -(until_ms if until_ms is not None else _INDEFINITE) * 16 + order


def _candidate_key(candidate: _Candidate) -> int:
    return candidate[0]


# the tests' oracle for trimming is an interpreted subclass; compiled classes refuse those unless told
@mypyc_attr(allow_interpreted_subclasses=True)
class Guard:
    """Applies one :class:`Policy` to customer states."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        # rule texts are rendered once here, not per evaluation
        self._channel_caps = tuple(
            tuple((rule, rule.text) for rule in policy.caps if rule.channel == name) for name in CHANNELS
        )
        self._global_caps = tuple((rule, rule.text) for rule in policy.caps if rule.channel is None)
        self._global_limits = tuple((rule.window_ms, rule.limit) for rule, _ in self._global_caps)
        self._hangup_rules = tuple((rule, rule.text) for rule in policy.hangup_rules)
        unbounded = 1 << 62
        self._min_channel_limit = tuple(
            min((rule.limit for rule, _ in caps), default=unbounded) for caps in self._channel_caps
        )
        self._min_global_limit = min((limit for _, limit in self._global_limits), default=unbounded)
        self._counted = policy.counted_categories
        self._retention_ms = policy.contact_retention_ms
        self._hangup_retention_ms = policy.hangup_retention_ms
        complaint = policy.complaint
        self._complaint_retention_ms = (
            max(complaint.channel_block_ms, complaint.other_channels_block_ms) if complaint else 0
        )
        # per-rule constants of the window checks, unpacked in one go on the hot path
        self._channel_windows = tuple(
            tuple(
                (rule.window_ms, rule.limit, rule.rule_id, text, format_duration(rule.window_ms)) for rule, text in caps
            )
            for caps in self._channel_caps
        )
        self._global_windows = tuple(
            (rule.window_ms, rule.limit, rule.rule_id, text, format_duration(rule.window_ms))
            for rule, text in self._global_caps
        )
        self._version = policy.version
        self._late_grace_ms = policy.late_grace_ms
        self._max_contacts = policy.max_contacts_per_channel
        self._max_event_ids = policy.max_event_ids
        self._unread = policy.unread
        self._quiet_hours = policy.quiet_hours
        self._complaint = policy.complaint

    # ------------------------------------------------------------------ drivers' entry points

    def process(self, state: CustomerState | None, event: Event) -> Step:
        """Apply one validated event. ``state`` is mutated in place and returned in the step."""
        event_type = event.type
        if event_type == "erase":
            return self._erase(state, event)
        event_id = event.event_id
        ts = event.ts_ms
        if state is None:
            # a new customer: nothing to settle or to trim yet
            state = CustomerState(event.customer_id)
            state.watermark_ms = ts
            state.ids[event_id] = ts
            step = Step(state)
        else:
            ids = state.ids
            if event_id in ids:
                return Step(state, rejection=_reject(event, "duplicate", "event_id already processed"))
            watermark = state.watermark_ms
            if watermark is not None and ts < watermark - self._late_grace_ms:
                detail = f"more than {format_duration(self._late_grace_ms)} older than the customer's newest event"
                return Step(state, rejection=_reject(event, "late", detail))
            step = Step(state)
            if watermark is None or ts > watermark:
                if state.pending:
                    self._finalize_deadlines(state, ts, step.decisions)
                state.watermark_ms = ts
                # trimming only bounds memory (every read filters by time), so once per hour of event time is
                # enough
                if watermark is None or ts // _TRIM_PERIOD_MS != watermark // _TRIM_PERIOD_MS:
                    self._trim(state, ts)
            # remember the id for de-duplication, the oldest forgotten beyond the bound
            ids[event_id] = ts
            if len(ids) > self._max_event_ids:
                del ids[next(iter(ids))]
                state.trimmed += 1
        # an if-chain, not a table of functions: compiled, these are direct calls
        if event_type == "contact":
            self._on_contact(state, event, step)
        elif event_type == "call_ended":
            self._on_call_ended(state, event, step)
        elif event_type == "email_opened":
            self._on_email_opened(state, event, step)
        elif event_type == "unsubscribe":
            self._on_unsubscribe(state, event, step)
        elif event_type == "complaint":
            self._on_complaint(state, event, step)
        elif event_type == "sms_stop":
            self._on_sms_stop(state, event, step)
        elif event_type == "preference":
            self._on_preference(state, event, step)
        else:
            raise ValueError(f"no handler for event type {event_type!r}")
        return step

    def advance(self, state: CustomerState, now_ms: int) -> Step:
        """Let time pass to ``now_ms`` without an event: fires unread deadlines before ``now_ms``.

        The decisions carry the deadline as ``decided_at``, so they are the same whichever driver fires them and
        whenever it does. The customer's watermark is not moved: only events do that.
        """
        step = Step(state)
        if state.pending:
            self._finalize_deadlines(state, now_ms, step.decisions)
        return step

    def current_decisions(self, state: CustomerState, now_ms: int | None = None) -> list[dict[str, Any]]:
        """The block decisions in force at ``now_ms`` (default: the customer's newest event), as the state keeps
        them: as emitted, without their evidence (see :meth:`evidence` to render it from the facts kept)."""
        at = state.watermark_ms if now_ms is None else now_ms
        return [
            record[1]
            for record in state.emitted
            if record is not None and _blocking(record[1], at if at is not None else record[0])
        ]

    def latest_decisions(self, state: CustomerState) -> list[dict[str, Any]]:
        """The last decision emitted per channel (a block, or an allow within the late grace), as the state keeps
        it: without its evidence, which was published with it and never feeds a later decision."""
        return [record[1] for record in state.emitted if record is not None]

    def evidence(self, state: CustomerState, channel: str, at_ms: int) -> dict[str, Any]:
        """The evidence ``{"rules": [...]}`` a block decided on ``channel`` at ``at_ms`` would carry, rendered from
        the facts the state keeps now: every block in force at that instant, the one a decision follows first
        (``rules`` is empty when nothing blocks the channel then).

        The state keeps decisions without their evidence; this is for the customer's right of access
        (fatigue.inspect). Like the engine's own evaluations, it is meant for instants at or after the customer's
        newest event: windows count every contact kept.
        """
        index = CHANNEL_INDEX[channel]
        candidates = self._candidates(state, index, at_ms)
        candidates += self._shared_candidates(state, at_ms)
        candidates.sort(key=_candidate_key)
        rules: list[dict[str, Any]] = []
        erased = False
        for candidate in candidates:
            if candidate[5] == _RENDER_OPT_OUT and candidate[6][0] == _ERASED_AT:
                # an erased customer's suppression keeps no instant: rendered as its decision was (see _erase)
                rules.append(_erased_opt_out(candidate[3], candidate[2], candidate[4], candidate[6][2]))
                erased = True
            else:
                rules.append(_render(candidate))
        return {"rules": rules, "erased": True} if erased else {"rules": rules}

    # ------------------------------------------------------------------ event handlers

    def _erase(self, state: CustomerState | None, event: Event) -> Step:
        """Right to erasure: forget everything, except that a channel the customer opted out of stays suppressed.

        The suppression keeps only the channel and the opt-out's source, and is re-published as a block whose
        evidence names the opt-out rule and its source, without an instant, and says that the customer was erased.
        """
        if state is None:
            return Step(None, erased=True)
        minimal = CustomerState(state.customer_id)
        decisions: list[dict[str, Any]] = []
        for channel, fact in enumerate(state.opt_outs):
            if fact is None or not fact[1]:
                continue
            source = fact[2]
            minimal.opt_outs[channel] = [_ERASED_AT, True, source]  # no instant: only that the customer opted out
            reason = _OPT_OUT_REASONS[source]
            rule = _opt_out_text(source, CHANNELS[channel])
            rule_id = f"opt_out.{source}"
            decision = {
                "customer_id": state.customer_id,
                "channel": CHANNELS[channel],
                "action": "block",
                "reason": reason,
                "rule": rule,
                "rule_id": rule_id,
                "until": None,
                "until_ms": None,
                # a block's evidence always lists its rules (consumers and the schema rely on it)
                "evidence": {"rules": [_erased_opt_out(rule_id, reason, rule, source)], "erased": True},
                "policy_version": self.policy.version,
                "decided_at": format_ms(event.ts_ms),
                "decided_at_ms": event.ts_ms,
                "cause_event_id": event.event_id,
            }
            minimal.emitted[channel] = [event.ts_ms, remembered(decision)]
            decisions.append(decision)
        kept = minimal if decisions else None
        return Step(kept, decisions=decisions, erased=True)

    def _on_contact(self, state: CustomerState, event: Event, step: Step) -> None:
        channel = CHANNEL_INDEX[event.channel]  # type: ignore[index]
        if event.category not in self._counted:
            return  # transactional (and, by default, service) messages neither count nor are ever blocked
        ts = event.ts_ms
        record = state.emitted[channel]
        late = ts < state.watermark_ms  # type: ignore[operator]  # set by process() before any handler
        if late or record is not None or state.quiet[channel] is not None or self._quiet_hours is not None:
            # in time order, without a decision on the channel and without quiet hours there is nothing to violate
            self._check_violations(state, event, channel, late, step.violations)
        log = state.logs[channel]
        insort(log, ts)
        if ts + self._retention_ms < state.trim_due_ms:
            state.trim_due_ms = ts + self._retention_ms  # a late contact can be the oldest kept
        if len(log) > self._max_contacts:
            del log[0]
            state.trimmed += 1
        unread = self._unread
        if unread is not None and channel == EMAIL and event.category == "marketing":
            pending = state.pending
            deadline = ts + unread.deadline_ms
            opened = 0
            if state.early_opens:
                # its open was delivered first (two producers, no order between them)
                opened_at = state.early_opens.pop(event.event_id, None)
                opened = 1 if opened_at is not None and opened_at <= deadline else 0
            insort(pending, [deadline, event.event_id, opened])
            if len(pending) > self._max_contacts:
                # a hot key: stop tracking its oldest unsettled mail (counted in `trimmed`) to stay bounded
                del pending[0]
                state.trimmed += 1
        logs = state.logs
        caps = state.customer_caps
        if (
            record is None
            and len(log) < self._min_channel_limit[channel]
            and len(logs[0]) + len(logs[1]) + len(logs[2]) < self._min_global_limit
            and caps[channel] is None
            and caps[SCOPE_ALL] is None
        ):
            # Fast path: nothing was blocking this channel at the last evaluation and no cap can be reached
            # with this few contacts kept, so a contact cannot change the decision (time alone only ends blocks).
            return
        now = state.watermark_ms
        assert now is not None
        # an all-channel cap reached blocks every channel: re-evaluate them all
        shared = self._shared_candidates(state, now)
        channels = ALL_CHANNEL_INDEXES if shared else (channel,)
        self._evaluate(state, channels, now, event.event_id, ts, step.decisions, "lifted", shared)

    def _on_call_ended(self, state: CustomerState, event: Event, step: Step) -> None:
        if not event.answered:
            return  # no pick-up, busy or voicemail: nobody hung up on anyone
        policy = self.policy
        changed = False
        if policy.hangup_rules and event.duration_s < policy.hangup_threshold_s:
            insort(state.hangups, event.ts_ms)
            _trim_due_by(state, event.ts_ms + self._hangup_retention_ms)
            if len(state.hangups) > policy.max_signals:
                del state.hangups[0]
                state.trimmed += 1
            changed = True
        conversation = policy.conversation
        if conversation is not None and event.duration_s >= conversation.min_duration_s:
            talked_at = state.conversation_ms
            if talked_at is None or event.ts_ms > talked_at:
                if talked_at is not None:
                    self._remember_superseded(state, _CONVERSATION_SIGNAL, talked_at, event.ts_ms)
                state.conversation_ms = event.ts_ms
                _trim_due_by(state, event.ts_ms + conversation.block_ms)
                changed = True
            elif event.ts_ms < talked_at:
                # an earlier conversation delivered late changes no decision, only late contacts' violations
                self._remember_superseded(state, _CONVERSATION_SIGNAL, event.ts_ms, talked_at)
        if changed:
            self._evaluate_event(state, (CALL,), event, step)

    def _on_email_opened(self, state: CustomerState, event: Event, step: Step) -> None:
        if event.machine:
            return  # a privacy proxy fetching mail is not a human reading it
        pending = state.pending
        for entry in pending:
            if entry[1] == event.ref:
                if event.ts_ms <= entry[0]:
                    entry[2] = 1
                break
        else:
            # not awaiting an open any more: it may have been settled as unread before this open (in time, but
            # delivered out of order) arrived, or its email may not have arrived yet
            if not self._reopen_settled(state, event, step) and self._unread is not None:
                self._remember_early_open(state, event)
        while pending and pending[0][2]:
            deadline, contact_event_id, _ = pending.pop(0)
            state.streak = 0
            self._remember_settled(state, deadline, contact_event_id)

    def _remember_lifted_opt_out(self, state: CustomerState, channel: int, opt_out: list[Any], lifted_ms: int) -> None:
        """Keep an opt-out that an opt-in has just lifted while a contact made before the opt-in can still arrive
        (the late grace): that contact was made on a blocked channel (see _block_at)."""
        self._keep_for_late_grace(state, state.lifted_opt_outs, [channel, opt_out[0], lifted_ms, opt_out[2]], lifted_ms)

    def _remember_superseded(self, state: CustomerState, kind: int, at: int, superseded_at: int) -> None:
        """Keep a complaint or conversation that a later one of the same kind supersedes while a contact made
        before the later one can still arrive (the late grace): made during the earlier one's block, that contact
        is a violation (see _block_at). Decisions need only the latest."""
        self._keep_for_late_grace(state, state.superseded_signals, [kind, at, superseded_at], superseded_at)

    def _keep_superseded_fact(
        self, state: CustomerState, kind: int, current: list[Any] | None, fact: list[Any]
    ) -> None:
        """Quiet hours and time zone judge a contact at its own instant: whichever of ``current`` and ``fact``
        (a preference just received) is the earlier is kept for the late grace after the later one, so a late
        contact made in between is judged with what was in force then (see _quiet_rule_at)."""
        if current is None or fact[0] == current[0]:
            return
        older, newer_at = (current, fact[0]) if fact[0] > current[0] else (fact, current[0])
        self._keep_for_late_grace(state, state.superseded_facts, [kind, older, newer_at], newer_at)

    def _keep_for_late_grace(self, state: CustomerState, kept: list[Any], entry: list[Any], ended_at: int) -> None:
        """Keep ``entry`` (its third item is ``ended_at``) until a contact made before ``ended_at`` would be late;
        the trim drops it then. A customer changing things faster than that keeps the latest few (hot-key bound)."""
        kept.append(entry)
        _trim_due_by(state, ended_at + self._late_grace_ms)
        if len(kept) > _MAX_KEPT_FOR_GRACE:
            del kept[0]
            state.trimmed += 1

    def _remember_early_open(self, state: CustomerState, event: Event) -> None:
        """Keep an open for an email not seen yet, until no contact made before the open can be accepted any more.

        The email's ``contact`` and the open come from different systems (sender, mail platform), so the open can
        be delivered first. Dropped with the event ids once older than the late grace (see _trim); the earliest
        open of an email is the one that can be in time.
        """
        ref = event.ref
        assert ref is not None  # validated: an email_opened always names its email
        early = state.early_opens
        known = early.get(ref)
        if known is None or event.ts_ms < known:
            early[ref] = event.ts_ms
        if len(early) > self._max_event_ids:
            del early[next(iter(early))]
            state.trimmed += 1

    def _reopen_settled(self, state: CustomerState, event: Event, step: Step) -> bool:
        """Correct the unread count when an email settled as unread turns out to have been opened in time.

        Settled emails are kept while an open for them can still be accepted (deadline within the late grace of
        the newest event). The streak after the corrected email is counted again, and the unread block becomes
        the one the corrected sequence gives: the latest email that completed a streak, or none; the email
        channel is then evaluated again (an ``allow`` when nothing else blocks it). True when the open is for a
        settled email (corrected or not).
        """
        settled = state.settled
        unread = self._unread
        for index, entry in enumerate(settled):  # noqa: B007 - index is used after the loop
            if entry[1] == event.ref:
                break
        else:
            return False
        if entry[2] == 0 or event.ts_ms > entry[0] or unread is None:
            return True  # read already, or opened after its deadline: unread it stays
        entry[2] = 0
        streak = 0
        for later in settled[index + 1 :]:
            if later[2]:  # unread: the count goes on from the corrected email
                streak += 1
                later[2] = streak
            else:
                streak = 0
        state.streak = streak
        block = state.unread_prior
        for deadline, contact_event_id, after in settled:
            if after >= unread.streak:
                block = [deadline, deadline + unread.block_ms, contact_event_id, after]
        if block != state.unread_block:
            state.unread_block = block
            if block is not None:
                _trim_due_by(state, block[1])
            self._evaluate_event(state, (EMAIL,), event, step)
        return True

    def _remember_settled(self, state: CustomerState, deadline: int, contact_event_id: str) -> None:
        # kept until no open for it can be accepted any more (see _reopen_settled); state.streak is its streak
        settled = state.settled
        settled.append([deadline, contact_event_id, state.streak])
        _trim_due_by(state, deadline + self._late_grace_ms + 1)
        if len(settled) > self._max_contacts:
            self._forget_settled(state, settled.pop(0))
            state.trimmed += 1

    def _forget_settled(self, state: CustomerState, entry: list[Any]) -> None:
        # an email that completed a streak stays the fallback block should a later one be corrected
        unread = self._unread
        if unread is not None and entry[2] >= unread.streak:
            state.unread_prior = [entry[0], entry[0] + unread.block_ms, entry[1], entry[2]]
            _trim_due_by(state, entry[0] + unread.block_ms)

    def _on_unsubscribe(self, state: CustomerState, event: Event, step: Step) -> None:
        channel = CHANNEL_INDEX[event.channel]  # type: ignore[index]
        if _set_fact(state.opt_outs, channel, [event.ts_ms, True, "unsubscribe"]):
            self._evaluate_event(state, (channel,), event, step)

    def _on_sms_stop(self, state: CustomerState, event: Event, step: Step) -> None:
        if _set_fact(state.opt_outs, SMS, [event.ts_ms, True, "sms_stop"]):
            self._evaluate_event(state, (SMS,), event, step)

    def _on_complaint(self, state: CustomerState, event: Event, step: Step) -> None:
        if self.policy.complaint is None:
            return
        channel = CHANNEL_INDEX[event.channel]  # type: ignore[index]
        previous = state.complaints[channel]
        if previous is None or event.ts_ms > previous:
            if previous is not None:
                self._remember_superseded(state, channel, previous, event.ts_ms)
            state.complaints[channel] = event.ts_ms
            _trim_due_by(state, event.ts_ms + self._complaint_retention_ms)
            self._evaluate_event(state, ALL_CHANNEL_INDEXES, event, step)
        elif event.ts_ms < previous:
            # an earlier complaint delivered late: the later one decides, this one judges late contacts made before
            self._remember_superseded(state, channel, event.ts_ms, previous)

    def _on_preference(self, state: CustomerState, event: Event, step: Step) -> None:
        prefs = event.prefs or {}
        ts = event.ts_ms
        scope = ALL_CHANNEL_INDEXES if event.channel is None else (CHANNEL_INDEX[event.channel],)
        affected: set[int] = set()
        if "opt_out" in prefs:
            for channel in scope:
                previous = state.opt_outs[channel]
                if _set_fact(state.opt_outs, channel, [ts, prefs["opt_out"], "opt_out"]):
                    affected.add(channel)
                    if previous is not None and previous[1] and not prefs["opt_out"]:
                        self._remember_lifted_opt_out(state, channel, previous, ts)
        if "max_contacts" in prefs:
            cap = prefs["max_contacts"]
            fact = [ts, cap[0], cap[1]] if cap is not None else [ts, None, None]
            cap_scope = SCOPE_ALL if event.channel is None else scope[0]
            if _set_fact(state.customer_caps, cap_scope, fact):
                state.trim_due_ms = 0  # a customer's cap window sets how long contacts are kept
                affected.update(scope)
        if "quiet_hours" in prefs:
            hours = prefs["quiet_hours"]
            for channel in scope:
                fact = [ts, *hours] if hours is not None else [ts, None, None]
                self._keep_superseded_fact(state, channel, state.quiet[channel], fact)
                _set_fact(state.quiet, channel, fact)
        if "timezone" in prefs:
            fact = [ts, prefs["timezone"]]
            self._keep_superseded_fact(state, _TIMEZONE_FACT, state.timezone, fact)
            if state.timezone is None or ts >= state.timezone[0]:
                state.timezone = fact
        if affected:
            lift_reason = "opt_in" if prefs.get("opt_out") is False else "customer_cap_changed"
            now = state.watermark_ms
            assert now is not None
            channels = tuple(sorted(affected))
            self._evaluate(state, channels, now, event.event_id, ts, step.decisions, lift_reason)

    # ------------------------------------------------------------------ evaluation

    def _evaluate_event(self, state: CustomerState, channels: tuple[int, ...], event: Event, step: Step) -> None:
        now = state.watermark_ms
        assert now is not None
        self._evaluate(state, channels, now, event.event_id, event.ts_ms, step.decisions, "lifted")

    def _evaluate(
        self,
        state: CustomerState,
        channels: tuple[int, ...],
        now: int,
        cause_event_id: str,
        cause_ms: int,
        decisions: list[dict[str, Any]],
        lift_reason: str,
        shared: list[_Candidate] | None = None,
    ) -> None:
        """Recompute the winning block of each channel at ``now`` and emit what changed.

        ``shared``: the all-channel candidates at ``now`` when the caller has them already.
        """
        if shared is None:
            shared = self._shared_candidates(state, now)
        # an all-channel candidate is rendered once for every channel's decision of this evaluation (keyed by
        # identity: the shared candidates stay alive throughout, unlike each channel's own)
        rendered = dict.fromkeys(map(id, shared)) if shared and len(channels) > 1 else None
        emitted = state.emitted
        for channel in channels:
            candidates = self._candidates(state, channel, now)
            if shared:
                candidates += shared
            record = emitted[channel]
            previous = None
            if record is not None:
                last = record[1]
                if last["action"] == "block" and (last["until_ms"] is None or last["until_ms"] > now):
                    previous = last
            if not candidates:
                if previous is not None:
                    allow = self._allow(state, channel, previous, lift_reason, cause_event_id, cause_ms)
                    decisions.append(allow)
                    emitted[channel] = [cause_ms, remembered(allow)]
                    _trim_due_by(state, cause_ms + self._late_grace_ms + 1)
                elif (
                    record is not None
                    and record[1]["action"] == "block"
                    and record[1]["until_ms"] + self._late_grace_ms <= now
                ):
                    # expired, and no contact made while it was in force can still arrive (late)
                    emitted[channel] = None
                continue
            if len(candidates) > 1:
                candidates.sort(key=_candidate_key)  # stable: equal keys keep the order they were found in
            winner = candidates[0]
            if (
                previous is not None
                and previous["until_ms"] == winner[1]
                and previous["rule_id"] == winner[3]
                and previous["reason"] == winner[2]
            ):
                continue
            decision = self._block(state, channel, winner, candidates, now, cause_event_id, cause_ms, rendered)
            since = record[0] if previous is not None and record is not None else cause_ms
            emitted[channel] = [since, remembered(decision)]
            if winner[1] is not None:
                _trim_due_by(state, winner[1] + self._late_grace_ms)
            decisions.append(decision)

    def _candidates(self, state: CustomerState, channel: int, now: int) -> list[_Candidate]:
        """Every block in force on ``channel`` at ``now``, each with its exact end (evidence rendered lazily)."""
        found: list[_Candidate] = []
        opt_out = state.opt_outs[channel]
        if opt_out is not None and opt_out[1]:
            source = opt_out[2]
            found.append(
                (
                    _sort_key(None, 0),
                    None,
                    _OPT_OUT_REASONS[source],
                    f"opt_out.{source}",
                    _opt_out_text(source, CHANNELS[channel]),
                    _RENDER_OPT_OUT,
                    opt_out,
                )
            )
        complaint = self._complaint
        complaints = state.complaints
        if complaint is not None and (complaints[0] or complaints[1] or complaints[2]):
            for other in ALL_CHANNEL_INDEXES:
                complained_at = complaints[other]
                if complained_at is None:
                    continue
                same = other == channel
                until = complained_at + (complaint.channel_block_ms if same else complaint.other_channels_block_ms)
                if until > now:
                    found.append(
                        (
                            _sort_key(until, 1),
                            until,
                            "complaint",
                            f"{complaint.rule_id}.{'channel' if same else 'other_channels'}",
                            complaint.text(CHANNELS[other], CHANNELS[channel]),
                            _RENDER_COMPLAINT,
                            (complained_at, CHANNELS[other]),
                        )
                    )
        cap = state.customer_caps[channel]
        if cap is not None and cap[1] is not None:
            candidate = self._customer_cap(state, channel, cap, now)
            if candidate is not None:
                found.append(candidate)
        if channel == CALL:
            if state.hangups or state.conversation_ms is not None:
                self._call_candidates(state, now, found)
        elif channel == EMAIL:
            block = state.unread_block
            if block is not None and block[1] > now:
                unread = self._unread
                until = block[1]
                found.append(
                    (
                        _sort_key(until, 5),
                        until,
                        "unread",
                        unread.rule_id if unread else "unread",
                        unread.text if unread else "email: unread in a row",
                        _RENDER_UNREAD,
                        block,
                    )
                )
        log = state.logs[channel]
        kept = len(log)
        for window_ms, limit, rule_id, text, window_text in self._channel_windows[channel]:
            if kept < limit:
                continue  # the common case: too few contacts kept to reach the limit at all
            start = now - window_ms
            count = kept - bisect_right(log, start)
            if count < limit:
                continue
            # blocked until the limit-th newest contact leaves the window; `log` is not changed before rendering
            until = log[-limit] + window_ms
            found.append(
                (
                    -until * 16 + 7,  # _sort_key(until, 7), inlined on this hot path
                    until,
                    "cap",
                    rule_id,
                    text,
                    _RENDER_WINDOW,
                    (count, limit, window_text, start, log),
                )
            )
        return found

    def _shared_candidates(self, state: CustomerState, now: int) -> list[_Candidate]:
        """Blocks that apply to every channel alike (all-channel caps), computed once per evaluation.

        Non-empty exactly when an all-channel cap (the policy's or the customer's own) is reached at ``now``.
        """
        found: list[_Candidate] = []
        logs = state.logs
        for window_ms, limit, rule_id, text, window_text in self._global_windows:
            window = _merged_window(logs, now, window_ms, limit)
            if window is not None:
                count, newest = window
                until = newest[0] + window_ms
                found.append(
                    (
                        -until * 16 + 6,  # _sort_key(until, 6)
                        until,
                        "global_cap",
                        rule_id,
                        text,
                        _RENDER_WINDOW,
                        (count, limit, window_text, now - window_ms, newest),
                    )
                )
        cap = state.customer_caps[SCOPE_ALL]
        if cap is not None and cap[1] is not None:
            candidate = self._customer_cap(state, SCOPE_ALL, cap, now)
            if candidate is not None:
                found.append(candidate)
        return found

    def _call_candidates(self, state: CustomerState, now: int, found: list[_Candidate]) -> None:
        hangups = state.hangups
        for rule, text in self._hangup_rules:
            # the latest qualifying hang-up gives the latest end, so walk back from the newest
            for index in range(len(hangups) - 1, -1, -1):
                at = hangups[index]
                until = at + rule.block_ms
                if until <= now:
                    break
                first = bisect_right(hangups, at - rule.window_ms, 0, index + 1)
                count = index + 1 - first
                if count >= rule.count:
                    found.append(
                        (
                            _sort_key(until, 3),
                            until,
                            "short_hangups",
                            rule.rule_id,
                            text,
                            _RENDER_HANGUPS,
                            (hangups[first : index + 1], rule),
                        )
                    )
                    break
        conversation = self.policy.conversation
        talked_at = state.conversation_ms
        if conversation is not None and talked_at is not None:
            until = talked_at + conversation.block_ms
            if until > now:
                found.append(
                    (
                        _sort_key(until, 4),
                        until,
                        "conversation",
                        conversation.rule_id,
                        conversation.text,
                        _RENDER_CONVERSATION,
                        talked_at,
                    )
                )

    def _customer_cap(self, state: CustomerState, scope: int, cap: list[Any], now: int) -> _Candidate | None:
        set_at, limit, window_ms = cap
        name = "all channels" if scope == SCOPE_ALL else CHANNELS[scope]
        text = f"customer: {name} <= {limit} per {format_duration(window_ms)}"
        rule_id = f"customer_cap.{'all' if scope == SCOPE_ALL else CHANNELS[scope]}"
        if limit == 0:
            return (_sort_key(None, 2), None, "customer_cap", rule_id, text, _RENDER_PREFERENCE, set_at)
        if scope == SCOPE_ALL:
            window = _merged_window(state.logs, now, window_ms, limit)
            if window is None:
                return None
            count, newest = window
        else:
            newest = state.logs[scope]
            if len(newest) < limit:
                return None
            count = len(newest) - bisect_right(newest, now - window_ms)
            if count < limit:
                return None
        until = newest[-limit] + window_ms
        data = (count, limit, format_duration(window_ms), now - window_ms, newest, set_at)
        return (_sort_key(until, 2), until, "customer_cap", rule_id, text, _RENDER_CUSTOMER_WINDOW, data)

    # ------------------------------------------------------------------ unread deadlines

    def _finalize_deadlines(self, state: CustomerState, before_ms: int, decisions: list[dict[str, Any]]) -> None:
        """Settle pending emails in deadline order: opened ones reset the streak, expired ones extend it."""
        unread = self.policy.unread
        pending = state.pending
        while pending and (pending[0][2] or pending[0][0] < before_ms):
            deadline, contact_event_id, opened = pending.pop(0)
            state.streak = 0 if opened else state.streak + 1
            self._remember_settled(state, deadline, contact_event_id)
            if opened:
                continue
            if unread is not None and state.streak >= unread.streak:
                state.unread_block = [deadline, deadline + unread.block_ms, contact_event_id, state.streak]
                _trim_due_by(state, deadline + unread.block_ms)
                self._evaluate(state, (EMAIL,), deadline, contact_event_id, deadline, decisions, "lifted")

    # ------------------------------------------------------------------ violations

    def _check_violations(
        self, state: CustomerState, event: Event, channel: int, late: bool, violations: list[dict[str, Any]]
    ) -> None:
        """A contact on a channel blocked at its own instant, or inside quiet hours, is the sender's violation.

        In time order the channel's last decision is the block in force (nothing has happened since). A late
        contact was made before events already applied, which may have started, moved or lifted blocks since: the
        block in force at its instant is worked out again from the facts of that instant (_block_at).
        """
        ts = event.ts_ms
        if late:
            found = self._block_at(state, channel, ts)
            if found is not None:
                reason, rule_id, until = found
                violations.append(
                    self._violation(event, "blocked", reason, rule_id, None if until is None else format_ms(until))
                )
        else:
            record = state.emitted[channel]
            if record is not None:
                since, decision = record
                if since <= ts and _blocking(decision, ts):
                    violations.append(
                        self._violation(event, "blocked", decision["reason"], decision["rule_id"], decision["until"])
                    )
        quiet = self._quiet_rule_at(state, channel, ts)
        if quiet is not None:
            violations.append(self._violation(event, "quiet_hours", "quiet_hours", quiet, None))

    def _block_at(self, state: CustomerState, channel: int, at: int) -> tuple[str, str, int | None] | None:
        """``(reason, rule_id, until)`` of the block on ``channel`` in force at a past instant ``at``, if any.

        Only facts made at or before ``at`` count: windows are recounted over ``(at - W, at]`` (the contact being
        checked is not in the logs yet), signals must precede ``at``. Opt-outs lifted by an opt-in are kept for the
        late grace; a customer's cap only in its latest version: one set after ``at`` says nothing about ``at``.
        The same precedence as decisions: the latest ``until`` wins (None: indefinite), ties by rule kind, then
        policy order.
        """
        best: tuple[int, str, str, int | None] | None = None

        def offer(until: int | None, order: int, reason: str, rule_id: str) -> None:
            nonlocal best
            if until is not None and until <= at:
                return
            key = _sort_key(until, order)
            if best is None or key < best[0]:
                best = (key, reason, rule_id, until)

        opt_out = state.opt_outs[channel]
        if opt_out is not None and opt_out[1] and opt_out[0] <= at:
            offer(None, 0, _OPT_OUT_REASONS[opt_out[2]], f"opt_out.{opt_out[2]}")
        for lifted_channel, since, lifted_at, source in state.lifted_opt_outs:
            if lifted_channel == channel and since <= at < lifted_at:
                offer(None, 0, _OPT_OUT_REASONS[source], f"opt_out.{source}")
        complaint = self._complaint
        superseded = state.superseded_signals
        if complaint is not None:
            # the latest complaint made at or before `at` per channel decides; offering the earlier ones too is
            # the same (an earlier start ends earlier)
            complained = [
                (other, complained_at)
                for other, complained_at in enumerate(state.complaints)
                if complained_at is not None and complained_at <= at
            ]
            complained += [(kind, then) for kind, then, _ in superseded if kind != _CONVERSATION_SIGNAL and then <= at]
            for other, complained_at in complained:
                same = other == channel
                block_ms = complaint.channel_block_ms if same else complaint.other_channels_block_ms
                kind_name = "channel" if same else "other_channels"
                offer(complained_at + block_ms, 1, "complaint", f"{complaint.rule_id}.{kind_name}")
        logs = state.logs
        for scope in (channel, SCOPE_ALL):
            cap = state.customer_caps[scope]
            if cap is None or cap[1] is None or cap[0] > at:
                continue
            rule_id = f"customer_cap.{'all' if scope == SCOPE_ALL else CHANNELS[scope]}"
            if cap[1] == 0:
                offer(None, 2, "customer_cap", rule_id)
                continue
            newest = _window_at(logs if scope == SCOPE_ALL else (logs[scope],), at, cap[2])
            if len(newest) >= cap[1]:
                offer(newest[-cap[1]] + cap[2], 2, "customer_cap", rule_id)
        if channel == CALL:
            hangups = state.hangups[: bisect_right(state.hangups, at)]
            for rule, _ in self._hangup_rules:
                for index, hung_up_at in enumerate(hangups):
                    if index + 1 - bisect_right(hangups, hung_up_at - rule.window_ms, 0, index + 1) >= rule.count:
                        offer(hung_up_at + rule.block_ms, 3, "short_hangups", rule.rule_id)
            conversation = self.policy.conversation
            if conversation is not None:
                talks = [then for kind, then, _ in superseded if kind == _CONVERSATION_SIGNAL]
                if state.conversation_ms is not None:
                    talks.append(state.conversation_ms)
                for talked_at in talks:
                    if talked_at <= at:
                        offer(talked_at + conversation.block_ms, 4, "conversation", conversation.rule_id)
        elif channel == EMAIL and self._unread is not None:
            for block in (state.unread_block, state.unread_prior):
                if block is not None and block[0] <= at:
                    offer(block[1], 5, "unread", self._unread.rule_id)
        for window_ms, limit, rule_id, _, _ in self._global_windows:
            newest = _window_at(logs, at, window_ms)
            if len(newest) >= limit:
                offer(newest[-limit] + window_ms, 6, "global_cap", rule_id)
        for window_ms, limit, rule_id, _, _ in self._channel_windows[channel]:
            newest = _window_at((logs[channel],), at, window_ms)
            if len(newest) >= limit:
                offer(newest[-limit] + window_ms, 7, "cap", rule_id)
        if best is None:
            return None
        return best[1], best[2], best[3]

    def _quiet_rule_at(self, state: CustomerState, channel: int, ts: int) -> str | None:
        """The quiet-hours rule id that ``ts`` falls in for this customer and channel, if any, with the customer's
        quiet hours and time zone of that instant (a late contact may precede the current ones)."""
        own = state.quiet[channel]
        if own is not None and own[0] > ts:
            own = _fact_at(state.superseded_facts, channel, ts)
        if own is None and self.policy.quiet_hours is None:
            return None
        ranges: list[tuple[int, int, str]] = []
        if own is not None and own[1] is not None:
            ranges.append((own[1], own[2], "customer.quiet_hours"))
        rule = self.policy.quiet_hours
        if rule is not None and CHANNELS[channel] in rule.channels:
            ranges.append((rule.start_minute, rule.end_minute, rule.rule_id))
        if not ranges:
            return None
        zone = state.timezone
        if zone is not None and zone[0] > ts:
            zone = _fact_at(state.superseded_facts, _TIMEZONE_FACT, ts)
        zone_name = zone[1] if zone is not None and zone[1] else None
        local = datetime.fromtimestamp(ts / 1000, ZoneInfo(zone_name or self.policy.default_timezone))
        minute = local.hour * 60 + local.minute
        for start, end, rule_id in ranges:
            # start == end is an empty range; start > end wraps midnight (21:00-08:00)
            inside = start <= minute < end if start <= end else (minute >= start or minute < end)
            if inside:
                return rule_id
        return None

    def _violation(self, event: Event, kind: str, reason: str, rule_id: str, until: str | None) -> dict[str, Any]:
        return {
            "customer_id": event.customer_id,
            "channel": event.channel,
            "kind": kind,
            "reason": reason,
            "rule_id": rule_id,
            "until": until,
            "sender": event.sender,
            "campaign": event.campaign,
            "category": event.category,
            "event_id": event.event_id,
            "ts": format_ms(event.ts_ms),
            "policy_version": self._version,
        }

    # ------------------------------------------------------------------ decisions

    def _block(
        self,
        state: CustomerState,
        channel: int,
        winner: _Candidate,
        candidates: list[_Candidate],
        now: int,
        cause_event_id: str,
        cause_ms: int,
        rendered: dict[int, dict[str, Any] | None] | None = None,
    ) -> dict[str, Any]:
        if rendered is None:
            rules = [_render(candidate) for candidate in candidates]
        else:
            rules = []
            for candidate in candidates:
                key = id(candidate)
                if key in rendered:
                    rule = rendered[key]
                    if rule is None:
                        rule = rendered[key] = _render(candidate)
                else:
                    rule = _render(candidate)
                rules.append(rule)
        until = winner[1]
        reason = winner[2]
        decision: dict[str, Any] = {
            "customer_id": state.customer_id,
            "channel": CHANNELS[channel],
            "action": "block",
            "reason": reason,
            "rule": winner[4],
            "rule_id": winner[3],
            "until": None if until is None else format_ms(until),
            "until_ms": until,
            "evidence": {"rules": rules},
            "policy_version": self._version,
            "decided_at": format_ms(cause_ms),
            "decided_at_ms": cause_ms,
            "cause_event_id": cause_event_id,
        }
        if reason in _NEGATIVE_REACTIONS and self._suggests(reason):
            decision["suggest"] = self._suggest(state, channel, now)
        return decision

    def _allow(
        self,
        state: CustomerState,
        channel: int,
        previous: dict[str, Any],
        reason: str,
        cause_event_id: str,
        cause_ms: int,
    ) -> dict[str, Any]:
        return {
            "customer_id": state.customer_id,
            "channel": CHANNELS[channel],
            "action": "allow",
            "reason": reason,
            "rule": f"lifts: {previous['rule']}",
            "rule_id": previous["rule_id"],
            "until": None,
            "until_ms": None,
            "evidence": {"lifted_reason": previous["reason"], "lifted_until": previous["until"]},
            "policy_version": self._version,
            "decided_at": format_ms(cause_ms),
            "decided_at_ms": cause_ms,
            "cause_event_id": cause_event_id,
        }

    def _suggests(self, reason: str) -> bool:
        return self.policy.hangup_suggest if reason == "short_hangups" else self.policy.unread_suggest

    def _suggest(self, state: CustomerState, blocked: int, now: int) -> str | None:
        """The open channel with the lowest cap pressure (count / limit); ties go to the less intrusive one."""
        best: tuple[float, int] | None = None
        for channel in ALL_CHANNEL_INDEXES:
            if channel == blocked:
                continue
            record = state.emitted[channel]
            if record is not None and _blocking(record[1], now):
                continue
            pressure = 0.0
            for rule, _ in self._channel_caps[channel]:
                log = state.logs[channel]
                count = len(log) - bisect_right(log, now - rule.window_ms)
                pressure = max(pressure, count / rule.limit)
            if best is None or pressure < best[0]:
                best = (pressure, channel)
        return CHANNELS[best[1]] if best is not None else None

    # ------------------------------------------------------------------ bookkeeping

    def _trim(self, state: CustomerState, now: int) -> None:
        """Drop what no rule can need any more once event time reaches ``now``."""
        # Runs for nearly every event of a sparse customer (once per hour of its event time). The ids were just
        # read by the de-duplication; the rest is only read when something in it can be due (``trim_due_ms``):
        # reading every part of a state that is not in the processor's caches is most of a trim's cost.
        ids = state.ids
        id_cutoff = now - self._late_grace_ms
        # ids are kept in arrival order: drop from the oldest up to the first one still inside the grace (the
        # loop usually stops at its first item; compiled, that is cheaper than peeking with next(iter(...)))
        stale: list[str] = []
        for event_id, seen_at in ids.items():
            if seen_at >= id_cutoff:
                break
            stale.append(event_id)
        for event_id in stale:
            del ids[event_id]
        early = state.early_opens
        if early:
            # an email contact made before the open would now be rejected as late: it can no longer arrive
            for ref in [ref for ref, opened_at in early.items() if opened_at < id_cutoff]:
                del early[ref]
        if now < state.trim_due_ms:
            return
        lifted = state.lifted_opt_outs
        if lifted:
            # a contact made before the opt-in would now be late
            lifted[:] = [entry for entry in lifted if entry[2] > id_cutoff]
        superseded = state.superseded_signals
        if superseded:
            # a contact made before the newer signal would now be late
            superseded[:] = [entry for entry in superseded if entry[2] > id_cutoff]
        facts = state.superseded_facts
        if facts:
            facts[:] = [entry for entry in facts if entry[2] > id_cutoff]
        retention = self._retention_ms
        caps = state.customer_caps
        if caps[0] is not None or caps[1] is not None or caps[2] is not None or caps[3] is not None:
            for cap in caps:
                if cap is not None and cap[2] is not None and cap[2] > retention:
                    retention = cap[2]
        cutoff = now - retention
        logs = state.logs
        for log in logs:
            if log and log[0] <= cutoff:
                del log[: bisect_right(log, cutoff)]
        hangups = state.hangups
        if hangups and hangups[0] <= now - self._hangup_retention_ms:
            del hangups[: bisect_right(hangups, now - self._hangup_retention_ms)]
        complaints = state.complaints
        if complaints[0] is not None or complaints[1] is not None or complaints[2] is not None:
            for index, at in enumerate(complaints):
                if at is not None and at + self._complaint_retention_ms <= now:
                    complaints[index] = None
        if state.conversation_ms is not None:
            conversation = self.policy.conversation
            if conversation is None or state.conversation_ms + conversation.block_ms <= now:
                state.conversation_ms = None
        if state.unread_block is not None and state.unread_block[1] <= now:
            state.unread_block = None
        settled = state.settled
        while settled and settled[0][0] + self._late_grace_ms < now:
            self._forget_settled(state, settled.pop(0))
        if state.unread_prior is not None and state.unread_prior[1] <= now:
            state.unread_prior = None
        emitted = state.emitted
        if emitted[0] is not None or emitted[1] is not None or emitted[2] is not None:
            allow_cutoff = now - self._late_grace_ms
            for index, record in enumerate(emitted):
                if record is None:
                    continue
                decision = record[1]
                # an allow is kept only while a redelivery of its cause could still arrive (the late grace); an
                # ended block while a contact made before its end could (it is a violation)
                expired = (
                    decision["decided_at_ms"] < allow_cutoff
                    if decision["action"] == "allow"
                    else decision["until_ms"] is not None and decision["until_ms"] <= allow_cutoff
                )
                if expired:
                    emitted[index] = None
        # The earliest instant at which any part above has something to drop again, from what is kept now (each
        # test above, solved for `now`). Whatever the engine adds later lowers it (_trim_due_by); a change of a
        # customer's cap window resets it.
        due = _NEVER
        for log in logs:
            if log and log[0] + retention < due:
                due = log[0] + retention
        if hangups and hangups[0] + self._hangup_retention_ms < due:
            due = hangups[0] + self._hangup_retention_ms
        for at in complaints:
            if at is not None and at + self._complaint_retention_ms < due:
                due = at + self._complaint_retention_ms
        if state.conversation_ms is not None:
            conversation = self.policy.conversation
            assert conversation is not None  # cleared above otherwise
            due = min(due, state.conversation_ms + conversation.block_ms)
        if state.unread_block is not None:
            due = min(due, state.unread_block[1])
        if settled:
            due = min(due, settled[0][0] + self._late_grace_ms + 1)
        if state.unread_prior is not None:
            due = min(due, state.unread_prior[1])
        for entry in lifted:
            due = min(due, entry[2] + self._late_grace_ms)
        for entry in superseded:
            due = min(due, entry[2] + self._late_grace_ms)
        for entry in facts:
            due = min(due, entry[2] + self._late_grace_ms)
        for record in emitted:
            if record is None:
                continue
            decision = record[1]
            if decision["action"] == "allow":
                due = min(due, decision["decided_at_ms"] + self._late_grace_ms + 1)
            elif decision["until_ms"] is not None:
                due = min(due, decision["until_ms"] + self._late_grace_ms)
        state.trim_due_ms = due


def _merged_window(logs: list[list[int]], now: int, window_ms: int, limit: int) -> tuple[int, list[int]] | None:
    """Exact sliding window ``(now - window, now]`` over all channels' logs together.

    None while fewer than ``limit`` contacts are inside it; else the count and the newest ``limit`` contacts inside
    it, oldest first: the block ends when the oldest of those leaves the window (its instant plus the window).
    """
    first_log, second_log, third_log = logs
    kept = len(first_log) + len(second_log) + len(third_log)
    if kept < limit:
        return None  # the common case: too few contacts kept to reach the limit at all
    start = now - window_ms
    first = bisect_right(first_log, start)
    second = bisect_right(second_log, start)
    third = bisect_right(third_log, start)
    count = kept - first - second - third
    if count < limit:
        return None
    # only the newest `limit` of each log can be among the newest `limit` overall
    newest = (
        first_log[max(first, len(first_log) - limit) :]
        + second_log[max(second, len(second_log) - limit) :]
        + third_log[max(third, len(third_log) - limit) :]
    )
    newest.sort()
    return count, newest[-limit:]


def _window_at(logs: tuple[list[int], ...] | list[list[int]], at: int, window_ms: int) -> list[int]:
    """The contacts of ``logs`` inside ``(at - window, at]``, oldest first (for instants before the newest)."""
    start = at - window_ms
    inside: list[int] = []
    for log in logs:
        inside += log[bisect_right(log, start) : bisect_right(log, at)]
    if len(logs) > 1:
        inside.sort()
    return inside


# Renderers of a candidate's entry in the evidence ("rules"): the rule, its end and what shows it is in force.
# A cap's contacts are the newest ``limit`` in its window, at most _MAX_EVIDENCE_TIMESTAMPS of them.


_RENDER_WINDOW: Final = 0
_RENDER_CUSTOMER_WINDOW: Final = 1
_RENDER_PREFERENCE: Final = 2
_RENDER_OPT_OUT: Final = 3
_RENDER_COMPLAINT: Final = 4
_RENDER_UNREAD: Final = 5
_RENDER_HANGUPS: Final = 6
_RENDER_CONVERSATION: Final = 7


def _render(candidate: _Candidate) -> dict[str, Any]:
    kind = candidate[5]
    if kind == _RENDER_WINDOW:
        return _render_window(candidate)
    if kind == _RENDER_CUSTOMER_WINDOW:
        return _render_customer_window(candidate)
    if kind == _RENDER_PREFERENCE:
        return _render_preference(candidate)
    if kind == _RENDER_OPT_OUT:
        return _render_opt_out(candidate)
    if kind == _RENDER_COMPLAINT:
        return _render_complaint(candidate)
    if kind == _RENDER_UNREAD:
        return _render_unread(candidate)
    if kind == _RENDER_HANGUPS:
        return _render_hangups(candidate)
    return _render_conversation(candidate)


def _render_window(candidate: _Candidate) -> dict[str, Any]:
    _, until, reason, rule_id, text, _, (count, limit, window_text, start, newest) = candidate
    assert until is not None  # a window's block always ends
    return {
        "rule_id": rule_id,
        "reason": reason,
        "rule": text,
        "until": format_ms(until),
        "count": count,
        "limit": limit,
        "window": window_text,
        "window_start": format_ms(start),
        "contacts": [format_ms(at) for at in newest[-min(limit, _MAX_EVIDENCE_TIMESTAMPS) :]],
    }


def _render_customer_window(candidate: _Candidate) -> dict[str, Any]:
    _, until, reason, rule_id, text, _, (count, limit, window_text, start, newest, set_at) = candidate
    assert until is not None  # a window's block always ends
    return {
        "rule_id": rule_id,
        "reason": reason,
        "rule": text,
        "until": format_ms(until),
        "preference_at": format_ms(set_at),
        "count": count,
        "limit": limit,
        "window": window_text,
        "window_start": format_ms(start),
        "contacts": [format_ms(at) for at in newest[-min(limit, _MAX_EVIDENCE_TIMESTAMPS) :]],
    }


def _render_preference(candidate: _Candidate) -> dict[str, Any]:
    # a customer cap of 0: blocked indefinitely
    _, until, reason, rule_id, text, _, set_at = candidate
    return {
        "rule_id": rule_id,
        "reason": reason,
        "rule": text,
        "until": None if until is None else format_ms(until),
        "preference_at": format_ms(set_at),
    }


def _render_opt_out(candidate: _Candidate) -> dict[str, Any]:
    _, until, reason, rule_id, text, _, fact = candidate
    return {
        "rule_id": rule_id,
        "reason": reason,
        "rule": text,
        "until": None if until is None else format_ms(until),
        "opted_out_at": format_ms(fact[0]),
        "source": fact[2],
    }


def _erased_opt_out(rule_id: str, reason: str, rule: str, source: str) -> dict[str, Any]:
    # an erased customer's suppression: the opt-out rule and its source, no instant
    return {"rule_id": rule_id, "reason": reason, "rule": rule, "until": None, "source": source}


def _render_complaint(candidate: _Candidate) -> dict[str, Any]:
    _, until, reason, rule_id, text, _, (complained_at, channel) = candidate
    return {
        "rule_id": rule_id,
        "reason": reason,
        "rule": text,
        "until": None if until is None else format_ms(until),
        "complaint_at": format_ms(complained_at),
        "complaint_channel": channel,
    }


def _render_unread(candidate: _Candidate) -> dict[str, Any]:
    _, until, reason, rule_id, text, _, block = candidate
    return {
        "rule_id": rule_id,
        "reason": reason,
        "rule": text,
        "until": None if until is None else format_ms(until),
        "streak": block[3],
        "last_deadline": format_ms(block[0]),
        "email_event_id": block[2],
    }


def _render_hangups(candidate: _Candidate) -> dict[str, Any]:
    _, until, reason, rule_id, text, _, (window, rule) = candidate
    return {
        "rule_id": rule_id,
        "reason": reason,
        "rule": text,
        "until": None if until is None else format_ms(until),
        "count": len(window),
        "window": format_duration(rule.window_ms),
        "hangups": [format_ms(at) for at in window[-_MAX_EVIDENCE_TIMESTAMPS:]],
    }


def _render_conversation(candidate: _Candidate) -> dict[str, Any]:
    _, until, reason, rule_id, text, _, talked_at = candidate
    return {
        "rule_id": rule_id,
        "reason": reason,
        "rule": text,
        "until": None if until is None else format_ms(until),
        "conversation_at": format_ms(talked_at),
    }


def _trim_due_by(state: CustomerState, at: int) -> None:
    """Something added to ``state`` can be trimmed from ``at`` on: the trim must look again by then."""
    if at < state.trim_due_ms:
        state.trim_due_ms = at


def _active(until_ms: int | None, at: int) -> bool:
    return until_ms is None or until_ms > at


def _blocking(decision: dict[str, Any], at: int) -> bool:
    """True when ``decision`` is a block still in force at ``at``."""
    return decision["action"] == "block" and _active(decision["until_ms"], at)


def _fact_at(superseded: list[list[Any]], kind: int, at: int) -> list[Any] | None:
    """The superseded fact of ``kind`` in force at ``at`` (the latest set at or before it), if one is kept."""
    found: list[Any] | None = None
    for entry_kind, fact, _ in superseded:
        if entry_kind == kind and fact[0] <= at and (found is None or fact[0] >= found[0]):
            found = fact
    return found


def _set_fact(facts: list[list[Any] | None], index: int, fact: list[Any]) -> bool:
    """Latest by event time wins (ties: the later arrival). True when the fact changed."""
    current = facts[index]
    if current is not None and fact[0] < current[0]:
        return False
    if current is not None and current[1:] == fact[1:]:
        facts[index] = fact if fact[0] > current[0] else current
        return False
    facts[index] = fact
    return True


def _opt_out_text(source: str, channel: str) -> str:
    if source == "unsubscribe":
        return f"customer unsubscribed from {channel}"
    if source == "sms_stop":
        return "customer replied STOP to an SMS"
    return f"customer opted out of {channel}"


def _reject(event: Event, reason: str, detail: str) -> Rejection:
    return Rejection(reason, detail, event.event_id, event.customer_id)
