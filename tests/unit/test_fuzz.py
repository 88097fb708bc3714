"""Hypothesis-generated hostile input: the parser and the engine never raise, whatever arrives."""

from __future__ import annotations

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fatigue.engine import Guard
from fatigue.events import Event, Rejection, parse_event
from fatigue.replay import Replay
from fatigue.state import CustomerState
from fatigue.testing import policy_named
from tests.strategies import event_like, keyed_messages

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


@settings(max_examples=300, deadline=None)
@given(
    st.lists(keyed_messages(customers=("a", "b", "c")), min_size=1, max_size=40),
    st.sampled_from([None, 1, 2]),
    st.sampled_from(["default", "reg-f", "tcpa"]),
    st.booleans(),
)
@example(  # an erased customer's unread deadline coming due by partition time (a KeyError, fixed in 73b7247)
    [
        (b"a", b'{"type":"contact","event_id":"m","customer_id":"a","channel":"email","ts":1764000000000}'),
        (b"a", b'{"type":"erase","event_id":"e","customer_id":"a","ts":1764003600000}'),
        (b"b", b'{"type":"contact","event_id":"s","customer_id":"b","channel":"sms","ts":1764345600000}'),
    ],
    1,
    "default",
    False,
)
def test_keyed_streams_never_crash_a_replay_with_or_without_partition_clocks(
    messages, partitions, policy_name, in_time_order
):
    """What the worker's oracle runs: erasures, deadlines that come due by partition time, rejections in between.

    ``in_time_order`` sorts the messages by their integer ``ts`` where they have one, so that partition time moves
    on steadily past pending deadlines, as it does in a real stream."""
    if in_time_order:
        messages = sorted(messages, key=_integer_ts)
    replay = Replay(Guard(policy_named(policy_name)), check_key=True, partitions=partitions)
    for key, raw in messages:
        step = replay.feed(raw, key)
        assert step.rejection is None or not (step.decisions or step.violations)  # a rejected event causes nothing
    replay.finish(replay.newest_ms)
    for state in replay.states.values():
        assert CustomerState.from_bytes(state.to_bytes()) == state


def _integer_ts(message: tuple[bytes | None, bytes]) -> int:
    try:
        body = orjson.loads(message[1])
    except orjson.JSONDecodeError:
        return 0
    ts = body.get("ts") if isinstance(body, dict) else None
    return ts if type(ts) is int else 0
