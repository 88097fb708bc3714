"""The customer's right of access: everything the guard holds about one customer, explained.

Pure: built from a :class:`CustomerState` and the policy at a given instant, so the worker's HTTP view, the CLI and
the tests (against a replay) all explain a customer the same way.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

from fatigue.engine import Guard
from fatigue.events import CHANNELS
from fatigue.state import CustomerState, preferences_view
from fatigue.timeutil import format_duration, format_ms, format_optional_ms


def explain(guard: Guard, state: CustomerState, now_ms: int | None = None) -> dict[str, Any]:
    """What is stored about the customer and what it means at ``now_ms`` (default: their newest event time).

    Each block in force comes with its evidence at that instant, rendered from the facts kept (the state keeps
    no decision's evidence): the rules blocking the channel then, which may have moved on since the block was
    decided (a window slides, a newer signal adds a rule).
    """
    policy = guard.policy
    at = now_ms if now_ms is not None else (state.watermark_ms or 0)
    counts: dict[str, dict[str, Any]] = {}
    for rule in policy.caps:
        logs = state.logs if rule.channel is None else [state.logs[CHANNELS.index(rule.channel)]]
        start = at - rule.window_ms
        count = sum(len(log) - bisect_right(log, start) for log in logs)
        counts[rule.rule_id] = {
            "rule": rule.text,
            "count": count,
            "limit": rule.limit,
            "window": format_duration(rule.window_ms),
            "window_start": format_ms(start),
        }
    blocks = [
        {
            "channel": decision["channel"],
            "reason": decision["reason"],
            "rule": decision["rule"],
            "until": decision["until"],
            "decided_at": decision["decided_at"],
            "evidence": _evidence(guard, state, decision, at),
        }
        for decision in guard.current_decisions(state, at)
    ]
    return {
        "customer_id": state.customer_id,
        "at": format_ms(at),
        "policy_version": policy.version,
        "newest_event_at": format_optional_ms(state.watermark_ms),
        "contacts_kept": {
            channel: [format_ms(ms) for ms in log] for channel, log in zip(CHANNELS, state.logs, strict=True)
        },
        "window_counts": counts,
        "signals": {
            "short_hangups": [format_ms(ms) for ms in state.hangups],
            "last_conversation": format_optional_ms(state.conversation_ms),
            "complaints": {
                channel: format_ms(ms) for channel, ms in zip(CHANNELS, state.complaints, strict=True) if ms is not None
            },
            "unread_streak": state.streak,
            "emails_awaiting_open": [
                {"email_event_id": entry[1], "deadline": format_ms(entry[0]), "opened": bool(entry[2])}
                for entry in state.pending
            ],
            # settled by their deadline, kept while a late open could still correct them
            "emails_settled": [
                {"email_event_id": entry[1], "deadline": format_ms(entry[0]), "opened": entry[2] == 0}
                for entry in state.settled
            ],
            # opt-outs an opt-in lifted, kept for the late grace: a contact made before the opt-in is a violation
            "opt_outs_lifted": [
                {
                    "channel": CHANNELS[channel],
                    "opted_out_at": format_ms(since),
                    "lifted_at": format_ms(lifted_at),
                    "source": source,
                }
                for channel, since, lifted_at, source in state.lifted_opt_outs
            ],
            # earlier complaints and conversations than the ones above, kept for the late grace: a contact made
            # during their blocks is a violation
            "signals_superseded": [
                {
                    "signal": "conversation" if kind == 3 else f"complaint:{CHANNELS[kind]}",
                    "at": format_ms(then),
                    "superseded_at": format_ms(superseded_at),
                }
                for kind, then, superseded_at in state.superseded_signals
            ],
            # earlier quiet hours and time zones than the current ones, kept for the late grace: a late contact is
            # judged with those of its own instant
            "preferences_superseded": [
                {
                    "field": "timezone" if kind == 3 else f"quiet_hours:{CHANNELS[kind]}",
                    "set_at": format_ms(fact[0]),
                    "value": fact[1]
                    if kind == 3
                    else (
                        None
                        if fact[1] is None
                        else f"{fact[1] // 60:02d}:{fact[1] % 60:02d}-{fact[2] // 60:02d}:{fact[2] % 60:02d}"
                    ),
                    "superseded_at": format_ms(superseded_at),
                }
                for kind, fact, superseded_at in state.superseded_facts
            ],
            # human opens delivered before the email they are for, kept for the late grace to be matched
            "opens_awaiting_their_email": [
                {"email_event_id": ref, "opened_at": format_ms(opened_at)}
                for ref, opened_at in state.early_opens.items()
            ],
        },
        "preferences": preferences_view(state),
        "active_blocks": blocks,
        "remembered_event_ids": len(state.ids),
        "trimmed_entries": state.trimmed,
        "stored_fields": (
            "pseudonymous customer id, contact timestamps per channel, outcome timestamps, preferences, "
            "event ids within the late grace, and the last decision per channel (without its evidence); no phone "
            "numbers, addresses or message bodies"
        ),
    }


def _evidence(guard: Guard, state: CustomerState, decision: dict[str, Any], at: int) -> dict[str, Any]:
    """The evidence of a block in force at ``at``, from the facts kept; what the decision itself says when the
    facts no longer show it (e.g. the policy that decided it has changed since), rather than nothing."""
    evidence = guard.evidence(state, decision["channel"], at)
    if not evidence["rules"]:
        fields = ("rule_id", "reason", "rule", "until")
        evidence["rules"].append({field: decision[field] for field in fields})
    return evidence
