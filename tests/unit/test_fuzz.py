"""Hypothesis-generated hostile input: the parser and the engine never raise, whatever arrives."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from fatigue.engine import Guard
from fatigue.events import EVENT_TYPES, Event, Rejection, parse_event
from fatigue.state import CustomerState
from fatigue.testing import policy_named

GUARD = Guard(policy_named("tcpa"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
# objects that look like events: the contract's field names with arbitrary values, plus anything else
event_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(EVENT_TYPES) | json_values,
        "event_id": st.text(min_size=1, max_size=8) | json_values,
        "customer_id": st.sampled_from(["a", "b"]) | json_values,
        "ts": st.integers(min_value=946_684_800_000, max_value=4_102_444_799_999) | json_values,
        "channel": st.sampled_from(["email", "sms", "call", "fax"]) | json_values,
        "category": st.sampled_from(["marketing", "service", "x"]) | json_values,
        "duration_s": st.floats(allow_nan=True) | json_values,
        "answered": json_values,
        "ref": json_values,
        "machine": json_values,
        "opt_out": json_values,
        "max_contacts": st.fixed_dictionaries({"count": json_values, "window": json_values}) | json_values,
        "quiet_hours": st.fixed_dictionaries({"start": json_values, "end": json_values}) | json_values,
        "timezone": st.sampled_from(["Europe/Paris", "Nowhere", "../etc"]) | json_values,
    },
)


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
