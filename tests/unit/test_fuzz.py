"""Hypothesis-generated hostile input: the parser and the engine never raise, whatever arrives."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from fatigue.engine import Guard
from fatigue.events import Event, Rejection, parse_event
from fatigue.state import CustomerState
from fatigue.testing import policy_named
from tests.strategies import event_like

GUARD = Guard(policy_named("tcpa"))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_rejected_or_parsed_never_raised(raw):
    assert isinstance(parse_event(raw, raw[:4] or None, check_key=True), Event | Rejection)


@settings(max_examples=800, deadline=None)
@given(st.lists(event_like, min_size=1, max_size=25))
def test_event_like_streams_never_crash_the_engine(bodies):
    states: dict[str, CustomerState | None] = {}
    for body in bodies:
        try:
            raw = orjson.dumps(body)
        except (TypeError, orjson.JSONEncodeError):
            continue  # not representable as JSON (e.g. an integer beyond 64 bits): cannot arrive on the wire
        parsed = parse_event(raw)
        if isinstance(parsed, Rejection):
            assert parsed.reason
            continue
        step = GUARD.process(states.get(parsed.customer_id), parsed)
        states[parsed.customer_id] = step.state
        if step.state is not None:
            assert CustomerState.from_bytes(step.state.to_bytes()) == step.state
