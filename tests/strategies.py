"""Hypothesis strategies for hostile input, shared by the core's fuzz tests and the worker's end-to-end test."""

from __future__ import annotations

import orjson
from hypothesis import strategies as st

from fatigue.events import EVENT_TYPES

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


# a well-formed event of any type (the fields a type does not use are ignored), over the ten days before 2026-12-01
_DAY_MS = 86_400_000
_END_MS = 1_764_547_200_000
well_formed = st.fixed_dictionaries(
    {
        "type": st.sampled_from(EVENT_TYPES),
        "event_id": st.text(alphabet="abcdef0123", min_size=1, max_size=5),
        "ts": st.integers(_END_MS - 10 * _DAY_MS, _END_MS),
        "channel": st.sampled_from(["email", "sms", "call"]),
    },
    optional={
        "category": st.sampled_from(["marketing", "service", "transactional"]),
        "sender": st.sampled_from(["crm", "dialer-1", "dialer-2"]),
        "duration_s": st.integers(0, 120) | st.floats(0, 120),
        "answered": st.booleans(),
        "ref": st.text(alphabet="abcdef0123", min_size=1, max_size=5),
        "machine": st.booleans(),
        "opt_out": st.booleans(),
        "max_contacts": st.fixed_dictionaries(
            {"count": st.integers(0, 4), "window": st.sampled_from(["12h", "1d", "7d", "2w"])}
        ),
        "quiet_hours": st.fixed_dictionaries(
            {"start": st.sampled_from(["21:00", "08:00", "00:00"]), "end": st.sampled_from(["08:00", "21:00"])}
        ),
        "timezone": st.sampled_from(["Europe/Paris", "America/New_York", "Asia/Shanghai"]),
    },
)


@st.composite
def keyed_messages(draw: st.DrawFn, customers: tuple[str, ...] = ("a", "b")) -> tuple[bytes | None, bytes]:
    """A Kafka message as a careless or hostile sender writes it: arbitrary bytes, an event-like object, or (most
    often, so that many are accepted and change state) a well-formed event, sometimes with one field spoilt. The
    key is mostly the message's customer id, otherwise another or none."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from([*(c.encode() for c in customers), None])), draw(st.binary(max_size=300))
    if kind <= 3:
        body = draw(event_like)
        if "customer_id" in body and draw(st.integers(0, 3)):
            body["customer_id"] = draw(st.sampled_from(customers))
    else:
        body = {**draw(well_formed), "customer_id": draw(st.sampled_from(customers))}
        if kind == 9:
            body[draw(st.sampled_from(sorted(body)))] = draw(json_values)
    try:
        raw = orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        raw = orjson.dumps({"unrepresentable": True})  # e.g. an integer beyond 64 bits: cannot be on the wire
    customer = body.get("customer_id")
    if isinstance(customer, str) and draw(st.integers(0, 7)):
        return customer.encode(), raw
    return draw(st.sampled_from([b"someone-else", None, *(c.encode() for c in customers)])), raw
