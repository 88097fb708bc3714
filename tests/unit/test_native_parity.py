"""Differential test: the compiled replay (``fatigue.native``, Rust) against the Python one, in lock step.

The Python replay (:class:`fatigue.replay.Replay` over :class:`fatigue.engine.Guard`) is the oracle. Both are fed the
same lines; after every line the decisions and violations (as ``orjson.dumps`` bytes), the rejection and the state
bytes of that line's customer must be equal, and at the end the ``finish`` decisions, the customers' order, the
stats, ``newest_ms`` and every customer's final state bytes.

Inputs: generated streams (:mod:`fatigue.generate`, hot keys and a long tail) under the shipped policies and
variants of them; timelines of every event type over a few customers (:func:`make_timeline`: from seeded
generators for volume, from hypothesis for small examples), dense in window, deadline, threshold, quiet-hours and
late-grace edges, with duplicates, reused ids, malformed lines and every accepted timestamp form; hostile messages
(tests/strategies.py); and the event lists of the engine's timeline tests (tests/unit/test_engine_*.py and
others), re-sent through both replays.

The native core is required: when ``fatigue.native`` does not import or ``native_available()`` is False every test
here fails, unless ``FATIGUE_NO_NATIVE=1`` (then they are skipped).

To find the first divergence on any input, outside pytest::

    .venv/bin/python -m tests.unit.test_native_parity                          # default policy, 30k events
    .venv/bin/python -m tests.unit.test_native_parity --policy tcpa --events 200000 --customers 2000 --seed 7
    .venv/bin/python -m tests.unit.test_native_parity --policy small --file EVENTS.jsonl
    .venv/bin/python -m tests.unit.test_native_parity --all-policies --events 50000
    .venv/bin/python -m tests.unit.test_native_parity --all-policies --timelines 5000 --steps 100
    .venv/bin/python -m tests.unit.test_native_parity --list-policies

or from Python: ``first_divergence(policy, lines)`` returns None or a :class:`Divergence` whose ``report()``
shows the line number, the line, both sides' outputs and states (and their differences), and the customer's
earlier lines.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import importlib
import inspect
import itertools
import os
import random
import sys
import tempfile
import tomllib
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fatigue.engine import Guard
from fatigue.events import Event, Rejection, parse_event
from fatigue.generate import generate_events, generate_messages, iso_timestamp
from fatigue.policy import Policy, load_policy, policy_from_mapping
from fatigue.replay import Replay, ReplayStats, resolve_flush_at
from fatigue.testing import DAY, HOUR, MINUTE, POLICY_DIR, SECOND, T0, Scenario
from tests.strategies import keyed_messages

NO_NATIVE_ENV = "FATIGUE_NO_NATIVE"
SEEDED_TIMELINES = 100  # per policy
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- the native side


class NativeStep(Protocol):
    @property
    def decisions(self) -> Sequence[bytes]: ...
    @property
    def violations(self) -> Sequence[bytes]: ...
    @property
    def rejection(self) -> Rejection | None: ...


class NativeReplayLike(Protocol):
    """What tests need of ``fatigue.native.NativeReplay``."""

    def feed(self, raw: bytes, key: bytes | None = None) -> NativeStep: ...
    def feed_all(self, lines: list[bytes]) -> None: ...
    def finish(self, flush_at_ms: int | None) -> Sequence[bytes]: ...
    def state_bytes(self, customer_id: str) -> bytes | None: ...
    def customers(self) -> Sequence[str]: ...
    @property
    def stats(self) -> ReplayStats: ...
    @property
    def newest_ms(self) -> int | None: ...


def native_problem() -> str | None:
    """Why the native replay cannot run here (None: it can)."""
    try:
        module = importlib.import_module("fatigue.native")
    except Exception as error:
        return f"fatigue.native does not import: {error!r}"
    try:
        available = bool(module.native_available())
    except Exception as error:
        return f"fatigue.native.native_available() raised {error!r}"
    if not available:
        reason = getattr(module, "UNAVAILABLE_REASON", None) or "is the extension fatigue._native built?"
        return f"fatigue.native.native_available() is False: {reason}"
    return None


def new_native(policy: Policy, *, check_key: bool = False) -> NativeReplayLike:
    from fatigue.native import NativeReplay

    replay: NativeReplayLike = NativeReplay(Guard(policy), check_key=check_key)
    return replay


@pytest.fixture(autouse=True, scope="module")
def _native_required() -> None:
    problem = native_problem()
    if problem is None:
        return
    if os.environ.get(NO_NATIVE_ENV) == "1":
        pytest.skip(f"{NO_NATIVE_ENV}=1: {problem}")
    pytest.fail(
        f"{problem}. The native core is required by this module: build it (native/, see fatigue/native.py), "
        f"or set {NO_NATIVE_ENV}=1 to skip these tests.",
        pytrace=False,
    )


# ---------------------------------------------------------------------------------------------- policies


def _shipped(name: str) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((POLICY_DIR / f"{name}.toml").read_text(encoding="utf-8"))
    return data


def _service_counted(data: dict[str, Any]) -> None:
    data["counting"]["categories"] = ["marketing", "service"]


def _small(data: dict[str, Any]) -> None:
    """Tiny caps and windows, and the smallest state bounds the policy allows: trimming and eviction all the time."""
    data["caps"] = [
        {"id": "cap.sms.1h", "channel": "sms", "limit": 1, "window": "1h"},
        {"id": "cap.email.1d", "channel": "email", "limit": 1, "window": "1d"},
        {"id": "cap.email.2d", "channel": "email", "limit": 3, "window": "2d"},
        {"id": "cap.call.12h", "channel": "call", "limit": 1, "window": "12h"},
        {"id": "global_cap.1d", "channel": "all", "limit": 2, "window": "1d"},
        {"id": "global_cap.90m", "channel": "all", "limit": 1, "window": "90m"},
    ]
    data["state"] = {"max_contacts_per_channel": 256, "max_event_ids": 16, "max_signals": 4}
    data["input"]["max_event_bytes"] = 600
    data["short_hangups"]["rules"] = [
        {"id": "short_hangups.4_in_1d", "count": 4, "window": "1d", "block": "6h"},
        {"id": "short_hangups.1_in_1h", "count": 1, "window": "1h", "block": "1h"},
    ]


def _no_unread(data: dict[str, Any]) -> None:
    del data["unread"]


def _no_complaint(data: dict[str, Any]) -> None:
    del data["complaint"]


def _hangups_strict(data: dict[str, Any]) -> None:
    data["short_hangups"] = {
        "threshold": "20s",
        "suggest": False,
        "rules": [
            {"id": "short_hangups.3_in_1d", "count": 3, "window": "1d", "block": "12h"},
            {"id": "short_hangups.1_in_1h", "count": 1, "window": "1h", "block": "90m"},
        ],
    }
    data["unread"]["suggest"] = False


def _no_hangups(data: dict[str, Any]) -> None:
    del data["short_hangups"]


def _signals_only(data: dict[str, Any]) -> None:
    data["caps"] = []


def _quiet_all_new_york(data: dict[str, Any]) -> None:
    data["quiet_hours"] = {"id": "quiet.all", "start": "22:00", "end": "07:00", "channels": ["email", "sms", "call"]}
    data["customer"]["default_timezone"] = "America/New_York"


def _quiet_lunch_kolkata(data: dict[str, Any]) -> None:
    data["quiet_hours"] = {"id": "quiet.lunch", "start": "12:00", "end": "13:30", "channels": ["email"]}
    data["customer"]["default_timezone"] = "Asia/Kolkata"


def _grace_1h(data: dict[str, Any]) -> None:
    data["input"]["late_grace"] = "1h"


def _grace_36h(data: dict[str, Any]) -> None:
    data["input"]["late_grace"] = "36h"


def _unread_fast(data: dict[str, Any]) -> None:
    data["unread"] = {"id": "unread.1h", "deadline": "1h", "streak": 1, "block": "2d", "suggest": False}


def _conversation_overlap(data: dict[str, Any]) -> None:
    """A 20-30 s answered call is both a short hang-up and a conversation."""
    data["conversation"] = {"id": "reg_f.conversation.20s", "min_duration": "20s", "block": "2d"}


def _conversation_45s(data: dict[str, Any]) -> None:
    data["conversation"] = {"id": "reg_f.conversation.45s", "min_duration": "45s", "block": "7d"}
    data["short_hangups"]["threshold"] = "45s"


# name -> (shipped file it starts from, change)
_VARIANTS: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "service-counted": ("default", _service_counted),
    "small": ("default", _small),
    "no-unread": ("default", _no_unread),
    "no-complaint": ("tcpa", _no_complaint),
    "hangups-strict": ("default", _hangups_strict),
    "no-hangups": ("reg-f", _no_hangups),
    "signals-only": ("default", _signals_only),
    "quiet-all-new-york": ("tcpa", _quiet_all_new_york),
    "quiet-lunch-kolkata": ("default", _quiet_lunch_kolkata),
    "grace-1h": ("default", _grace_1h),
    "grace-36h": ("tcpa", _grace_36h),
    "unread-fast": ("default", _unread_fast),
    "conversation-overlap": ("reg-f", _conversation_overlap),
    "conversation-45s": ("reg-f", _conversation_45s),
}
SHIPPED = ("default", "tcpa", "reg-f")
POLICY_NAMES = (*SHIPPED, *_VARIANTS)


@functools.cache
def policy_by_name(name: str) -> Policy:
    """A shipped policy (``default``, ``tcpa``, ``reg-f``), a variant of one (see ``POLICY_NAMES``) or a TOML file."""
    if name in SHIPPED:
        return load_policy(POLICY_DIR / f"{name}.toml")
    if name in _VARIANTS:
        base, change = _VARIANTS[name]
        data = copy.deepcopy(_shipped(base))
        change(data)
        data["version"] = f"{data['version']}+{name}"
        return policy_from_mapping(data, source=f"variant {name} of {base}.toml")
    if Path(name).exists():
        return load_policy(name)
    raise ValueError(f"unknown policy {name!r}: one of {', '.join(POLICY_NAMES)} or a TOML file")


# ---------------------------------------------------------------------------------------------- the lock step


@dataclass
class Divergence:
    """The first place where the native replay differs from the Python one."""

    policy: Policy
    stage: str  # "line", "newest_ms", "finish", "customers", "stats", "final state"
    what: list[str]  # the parts that differ
    line_number: int | None = None  # 1-based
    line: bytes | None = None
    key: bytes | None = None
    customer_id: str | None = None
    python: dict[str, Any] = field(default_factory=dict)  # part -> value
    native: dict[str, Any] = field(default_factory=dict)
    python_state: bytes | None = None
    native_state: bytes | None = None
    compare_state: bool = False
    history: list[tuple[int, bytes]] = field(default_factory=list)  # the customer's earlier lines
    history_total: int = 0
    native_error: str | None = None
    label: str = ""
    note: str = ""

    def __str__(self) -> str:
        return self.report()

    def report(self, history_lines: int = 30) -> str:
        out: list[str] = []
        where = f"line {self.line_number}" if self.line_number is not None else f"the end ({self.stage})"
        if self.native_error is not None:
            head = f"native replay raised an exception at {where}"
        else:
            head = f"native replay diverges from the Python replay at {where}"
        if self.label:
            head += f" of {self.label}"
        if self.native_error is None:
            head += f": {', '.join(self.what)} differ"
        out.append(head + (f" ({self.note})" if self.note else ""))
        out.append(f"policy {self.policy.version} ({self.policy.source})")
        if self.line is not None:
            out.append(f"line {self.line_number}: {_show_bytes(self.line)}")
            if self.key is not None:
                out.append(f"key: {_show_bytes(self.key)}")
        if self.customer_id is not None:
            out.append(f"customer: {self.customer_id!r}")
        if self.native_error is not None:
            out.append("native raised:")
            out.extend("  " + line for line in self.native_error.rstrip().splitlines())
        for part in _ordered(self.python.keys() | self.native.keys()):
            python, native = self.python.get(part), self.native.get(part)
            out.append("")
            if self.native_error is not None:
                out.append(f"=== {part} (python):")
                out.extend("  " + line for line in _layout_value(python))
            elif part in self.what:
                out.append(f"=== {part}: DIFFER")
                out.extend(_side_by_side(python, native))
            else:
                out.append(f"=== {part}: same on both sides")
                out.extend("  " + line for line in _layout_value(python))
        if self.compare_state:
            out.append("")
            if "state" in self.what:
                out.append(f"=== state of {self.customer_id!r} after it: DIFFER")
                out.extend(_side_by_side(self.python_state, self.native_state, is_state=True))
            else:
                out.append(f"=== state of {self.customer_id!r} after it: same on both sides")
                out.extend("  " + line for line in _layout_state(self.python_state))
        if self.customer_id is not None and self.history_total:
            shown = self.history[-history_lines:]
            out.append("")
            out.append(
                f"=== the customer's lines up to it ({len(shown)} of {self.history_total}; other customers' lines "
                "do not affect it in a replay without partitions):"
            )
            for number, raw in shown:
                marker = ">" if number == self.line_number else " "
                out.append(f"{marker}{number:>8}  {_show_bytes(raw)}")
        return "\n".join(out)


_PART_ORDER = ("rejection", "decisions", "violations", "newest_ms", "finish", "customers", "stats", "final state")


def _ordered(parts: set[str]) -> list[str]:
    return sorted(parts, key=lambda part: (_PART_ORDER.index(part) if part in _PART_ORDER else 99, part))


def _feed_native(native: NativeReplayLike, raw: bytes, key: bytes | None) -> NativeStep | str:
    try:
        return native.feed(raw, key)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # a Rust panic arrives as pyo3's PanicException, a BaseException
        return traceback.format_exc()


def first_divergence(
    policy: Policy,
    lines: Sequence[bytes],
    keys: Sequence[bytes | None] | None = None,
    *,
    check_key: bool = False,
    flush_at: str = "end",
    label: str = "",
) -> Divergence | None:
    """Feed ``lines`` to both replays in lock step; None when they agree everywhere, else the first divergence.

    ``flush_at`` is what ``fatigue replay --flush-at`` takes (``end``: the newest event time, ``never``, an instant).
    """
    python = Replay(Guard(policy), check_key=check_key)
    native = new_native(policy, check_key=check_key)
    max_bytes = policy.max_event_bytes
    history: dict[str, list[int]] = {}  # customer -> indexes of its lines
    states = python.states

    def customer_history(customer: str | None) -> tuple[list[tuple[int, bytes]], int]:
        indexes = history.get(customer or "", [])
        return [(index + 1, lines[index]) for index in indexes[-200:]], len(indexes)

    for index, raw in enumerate(lines):
        key = keys[index] if keys is not None else None
        python_step = python.feed(raw, key)
        native_step = _feed_native(native, raw, key)
        parsed = parse_event(raw, key, check_key=check_key, max_bytes=max_bytes)
        customer = parsed.customer_id if isinstance(parsed, Event) else None
        if customer is not None:
            history.setdefault(customer, []).append(index)
        python_parts = {
            "rejection": python_step.rejection,
            "decisions": [orjson.dumps(decision) for decision in python_step.decisions],
            "violations": [orjson.dumps(violation) for violation in python_step.violations],
        }
        if isinstance(native_step, str):
            shown, total = customer_history(customer)
            return Divergence(
                policy,
                "line",
                ["native exception"],
                index + 1,
                raw,
                key,
                customer,
                python=python_parts,
                native_error=native_step,
                history=shown,
                history_total=total,
                label=label,
            )
        native_parts = {
            "rejection": native_step.rejection,
            "decisions": list(native_step.decisions),
            "violations": list(native_step.violations),
        }
        what = [part for part in python_parts if python_parts[part] != native_parts[part]]
        python_state = native_state = None
        if customer is not None:
            state = states.get(customer)
            python_state = None if state is None else state.to_bytes()
            native_state = native.state_bytes(customer)
            if python_state != native_state:
                what.append("state")
        if what:
            shown, total = customer_history(customer)
            return Divergence(
                policy,
                "line",
                what,
                index + 1,
                raw,
                key,
                customer,
                python=python_parts,
                native=native_parts,
                python_state=python_state,
                native_state=native_state,
                compare_state=customer is not None,
                history=shown,
                history_total=total,
                label=label,
            )

    def at_end(stage: str, python_value: Any, native_value: Any, customer: str | None = None) -> Divergence:
        shown, total = customer_history(customer)
        return Divergence(
            policy,
            stage,
            [stage],
            customer_id=customer,
            python={stage: python_value},
            native={stage: native_value},
            history=shown,
            history_total=total,
            label=label,
        )

    if python.newest_ms != native.newest_ms:
        return at_end("newest_ms", python.newest_ms, native.newest_ms)
    flush_at_ms = resolve_flush_at(flush_at, python.newest_ms)
    python_finish = [orjson.dumps(decision) for decision in python.finish(flush_at_ms)]
    try:
        native_finish = list(native.finish(flush_at_ms))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        divergence = at_end("finish", python_finish, None)
        divergence.native_error = traceback.format_exc()
        return divergence
    if python_finish != native_finish:
        at = next(
            (i for i, pair in enumerate(itertools.zip_longest(python_finish, native_finish)) if pair[0] != pair[1]), 0
        )
        first = python_finish[at] if at < len(python_finish) else native_finish[at]
        customer = _customer_of(first)
        divergence = at_end("finish", python_finish[at : at + 3], native_finish[at : at + 3], customer)
        divergence.note = (
            f"from decision #{at + 1} on, up to 3 shown; {len(python_finish)} python vs {len(native_finish)} native"
        )
        return divergence
    python_customers = list(states)
    native_customers = list(native.customers())
    if python_customers != native_customers:
        at = next(
            (
                i
                for i, pair in enumerate(itertools.zip_longest(python_customers, native_customers))
                if pair[0] != pair[1]
            ),
            0,
        )
        divergence = at_end(
            "customers",
            python_customers[max(at - 2, 0) : at + 5],
            native_customers[max(at - 2, 0) : at + 5],
        )
        divergence.note = (
            f"first at position {at}, shown from {max(at - 2, 0)}; "
            f"{len(python_customers)} python vs {len(native_customers)} native customers"
        )
        return divergence
    native_stats = native.stats
    if python.stats != native_stats:
        return at_end("stats", _stats_dict(python.stats), _stats_dict(native_stats))
    for customer, state in states.items():
        python_state = state.to_bytes()
        native_state = native.state_bytes(customer)
        if python_state != native_state:
            divergence = at_end("final state", None, None, customer)
            divergence.python, divergence.native = {}, {}
            divergence.what = ["state"]
            divergence.note = "every line and finish agreed; the state after finish differs"
            divergence.python_state, divergence.native_state = python_state, native_state
            divergence.compare_state = True
            return divergence
    return None


def _customer_of(decision: bytes | None) -> str | None:
    try:
        customer = orjson.loads(decision or b"null")["customer_id"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None
    return customer if isinstance(customer, str) else None


def _stats_dict(stats: ReplayStats) -> dict[str, Any]:
    return {
        "events": stats.events,
        "accepted": stats.accepted,
        "decisions": {"/".join(key): count for key, count in sorted(stats.decisions.items()) if count},
        "rejections": {key: count for key, count in sorted(stats.rejections.items()) if count},
        "violations": {"/".join(key): count for key, count in sorted(stats.violations.items()) if count},
    }


# ---------------------------------------------------------------------------------------------- showing values

_WIDTH = 116


def _show_bytes(raw: bytes, limit: int = 600) -> str:
    text = raw.decode("utf-8", "backslashreplace")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(raw)} bytes)"


def _compact(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


def _layout(value: Any, indent: int = 0) -> list[str]:
    """JSON laid out for reading and diffing: compact when it fits the width, else one member per line (and lists
    of scalars wrapped)."""
    pad = " " * indent
    text = _compact(value)
    if indent + len(text) <= _WIDTH or not isinstance(value, list | dict) or not value:
        return [pad + text]
    if isinstance(value, dict):
        lines = [pad + "{"]
        items = list(value.items())
        for position, (name, member) in enumerate(items):
            sub = _layout(member, indent + 2)
            sub[0] = f"{pad}  {_compact(name)}: {sub[0].lstrip()}"
            if position < len(items) - 1:
                sub[-1] += ","
            lines.extend(sub)
        lines.append(pad + "}")
        return lines
    lines = [pad + "["]
    if all(not isinstance(member, list | dict) for member in value):
        row = ""
        for position, member in enumerate(value):
            piece = _compact(member) + ("," if position < len(value) - 1 else "")
            if row and indent + 2 + len(row) + 1 + len(piece) > _WIDTH:
                lines.append(f"{pad}  {row}")
                row = piece
            else:
                row = f"{row} {piece}" if row else piece
        lines.append(f"{pad}  {row}")
    else:
        for position, member in enumerate(value):
            sub = _layout(member, indent + 2)
            if position < len(value) - 1:
                sub[-1] += ","
            lines.extend(sub)
    lines.append(pad + "]")
    return lines


def _decoded(value: Any) -> Any:
    """Bytes holding JSON (or lists of them) decoded for layout; anything else as it is."""
    if isinstance(value, bytes):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return f"<not JSON> {_show_bytes(value)}"
    if isinstance(value, list) and value and all(isinstance(item, bytes) for item in value):
        return [_decoded(item) for item in value]
    if isinstance(value, Rejection):
        return {"Rejection": value.to_dict()}
    return value


def _layout_value(value: Any) -> list[str]:
    if value is None:
        return ["None"]
    decoded = _decoded(value)
    if isinstance(decoded, str | int) and not isinstance(value, bytes):
        return [repr(decoded)]
    return _layout(decoded)


def _layout_state(raw: bytes | None) -> list[str]:
    return ["(no state)"] if raw is None else _layout(_decoded(raw))


def _side_by_side(python: Any, native: Any, *, is_state: bool = False) -> list[str]:
    show = _layout_state if is_state else _layout_value
    python_lines, native_lines = show(python), show(native)
    out = ["--- python:"]
    out.extend("  " + line for line in python_lines)
    out.append("--- native:")
    out.extend("  " + line for line in native_lines)
    if python_lines == native_lines:
        out.append("--- equal once decoded: the bytes differ (key order, number format, escaping, or the type):")
        out.extend("  " + line for line in _byte_hints(python, native))
    else:
        out.append("--- diff (python -> native):")
        diff = difflib.unified_diff(python_lines, native_lines, "python", "native", lineterm="", n=2)
        out.extend("  " + line for line in list(diff)[2:])
    return out


def _byte_hints(python: Any, native: Any) -> list[str]:
    pairs: list[tuple[str, Any, Any]]
    if isinstance(python, list) and isinstance(native, list) and len(python) == len(native):
        pairs = [(f"#{i + 1}", a, b) for i, (a, b) in enumerate(zip(python, native, strict=True)) if a != b]
    else:
        pairs = [("", python, native)]
    hints: list[str] = []
    for name, a, b in pairs:
        if isinstance(a, bytes) and isinstance(b, bytes):
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            start = max(at - 40, 0)
            hints.append(f"{name} first differing byte at offset {at} ({len(a)} vs {len(b)} bytes):")
            hints.append(f"  python: ...{_show_bytes(a[start : at + 40])}...")
            hints.append(f"  native: ...{_show_bytes(b[start : at + 40])}...")
        else:
            hints.append(f"{name} python {type(a).__name__}: {a!r}")
            hints.append(f"{name} native {type(b).__name__}: {b!r}")
    return hints


def assert_same(
    policy: Policy,
    lines: Sequence[bytes],
    keys: Sequence[bytes | None] | None = None,
    *,
    check_key: bool = False,
    label: str = "",
) -> None:
    divergence = first_divergence(policy, lines, keys, check_key=check_key, label=label)
    if divergence is not None:
        pytest.fail(divergence.report(), pytrace=False)


# ---------------------------------------------------------------------------------------------- generated streams


@functools.cache
def _stream(events: int, customers: int, seed: int, skew: float = 1.0) -> tuple[bytes, ...]:
    return tuple(generate_events(events, customers, seed, skew=skew))


@pytest.mark.parametrize(
    ("policy_name", "events", "seed"), [("default", 30_000, 11), ("tcpa", 15_000, 13), ("reg-f", 15_000, 14)]
)
def test_hot_keys_stream(policy_name, events, seed):
    """Over 300 customers: a few hot customers with hundreds of contacts (state bounds, trimming). The Python side's
    state bytes after every line of a hot customer are most of this module's time."""
    label = f"{events} events / 300 customers, seed {seed}"
    assert_same(policy_by_name(policy_name), _stream(events, 300, seed), label=label)


@pytest.mark.parametrize("policy_name", SHIPPED)
def test_long_tail_stream(policy_name):
    """20k events over 5k customers, uniform: many small states, first contacts, new customers."""
    assert_same(policy_by_name(policy_name), _stream(20_000, 5_000, 12, 0.0), label="20k events / 5k customers")


@pytest.mark.parametrize("seed", [21, 22])
def test_other_seeds(seed):
    assert_same(policy_by_name("default"), _stream(12_000, 150, seed), label=f"12k events / 150 customers, seed {seed}")


@pytest.mark.parametrize("policy_name", list(_VARIANTS))
def test_policy_variants_on_a_stream(policy_name):
    assert_same(policy_by_name(policy_name), _stream(6_000, 40, 31), label="6k events / 40 customers, seed 31")


def test_keyed_messages_with_check_key():
    """Kafka messages with their keys (None for a malformed line without a customer id), keys checked."""
    messages = list(generate_messages(10_000, 500, 41))
    keys = [key for key, _ in messages]
    lines = [value for _, value in messages]
    # a few wrong keys too
    for index in range(0, len(keys), 97):
        keys[index] = b"someone-else" if index % 2 else None
    assert_same(
        policy_by_name("tcpa"), lines, keys, check_key=True, label="10k keyed messages / 500 customers, keys checked"
    )


def test_feed_all_equals_feed():
    """``feed_all`` (the benchmark's path) ends where feeding line by line ends: stats, states, finish."""
    policy = policy_by_name("reg-f")
    lines = list(_stream(12_000, 150, 21))
    python = Replay(Guard(policy))
    for line in lines:
        python.feed(line)
    native = new_native(policy)
    native.feed_all(lines[:5_000])
    native.feed_all([])
    native.feed_all(lines[5_000:])
    assert native.newest_ms == python.newest_ms
    assert native.stats == python.stats, (_stats_dict(python.stats), _stats_dict(native.stats))
    assert list(native.finish(python.newest_ms)) == [orjson.dumps(d) for d in python.finish(python.newest_ms)]
    assert list(native.customers()) == list(python.states)
    for customer, state in python.states.items():
        assert native.state_bytes(customer) == state.to_bytes(), customer


def test_finish_never_and_unknown_customer():
    policy = policy_by_name("default")
    lines = list(_stream(2_000, 50, 51))
    assert first_divergence(policy, lines, flush_at="never") is None
    native = new_native(policy)
    assert native.state_bytes("nobody") is None
    assert list(native.customers()) == []
    assert native.newest_ms is None
    assert list(native.finish(None)) == []
    assert native.stats == ReplayStats()


# ---------------------------------------------------------------------------------------------- timelines

CUSTOMERS = ("c1", "c2", "kü-3", "😀4")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# starting instants: a Monday 09:00 UTC, that evening, and the days before DST changes (US, EU, Australia)
STARTS = (
    T0,
    T0 + 12 * HOUR + 59 * MINUTE,
    1_793_448_000_000,  # 2026-10-31T12:00Z, the US falls back on Nov 1
    1_772_884_800_000,  # 2026-03-07T12:00Z, the US springs forward on Mar 8
    1_774_699_200_000,  # 2026-03-28T12:00Z, Europe springs forward on Mar 29
    1_775_304_000_000,  # 2026-04-04T12:00Z, South Australia falls back on Apr 5
)
GAPS = (0, 1, 999, SECOND, 30 * SECOND, MINUTE, 15 * MINUTE, HOUR - 1, HOUR, 3 * HOUR, 12 * HOUR, DAY - 1, DAY)
GAPS_LONG = (DAY + 1, 3 * DAY, 7 * DAY - 1, 7 * DAY, 30 * DAY)
# how long after its event time a message arrives: on time, a little late, inside and at the edge of the 24 h (1 h,
# 36 h) late grace, beyond it
LATE_EDGES = (HOUR - 1, HOUR, HOUR + 1, DAY - 1, DAY, DAY + 1, 36 * HOUR, 36 * HOUR + 1)
# around the short hang-up thresholds (30 s, 20 s, 45 s) and the conversation thresholds (30 s, 20 s, 45 s)
DURATIONS = (0, 1, 12.5, 19.99, 20, 20.0, 25, 29, 29.9, 29.999999, 30, 30.0, 30.001, 44.9, 45, 45.5, 120, 3600, 1e7)
# an open after its email: at, just before and just after the 72 h and 1 h deadlines; or before it
OPEN_DELAYS = (0, 1, MINUTE, HOUR - 1, HOUR, HOUR + 1, 6 * HOUR, 72 * HOUR - 1, 72 * HOUR, 72 * HOUR + 1, 4 * DAY)
SENDERS = (None, "crm", "dialer-a", "dialer-b", "süd-gateway")
CAMPAIGNS = (None, "cmp-1", "cmp-2")
ZONES = (
    "Europe/Paris",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Adelaide",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "America/St_Johns",
    "Australia/Lord_Howe",
    "Europe/Dublin",
    "Africa/Casablanca",
    "UTC",
)
ODD_ZONES = ("Etc/GMT+5", "US/Eastern", "Asia/Calcutta", "EST5EDT", "GMT", "Factory", "posix/Europe/Paris", "utc")
CLOCKS = ("21:00", "08:00", "22:00", "07:30", "00:00", "23:59", "12:00", "13:30")
WINDOWS = ("1ms", "1h", "12h", "1d", "7d", "2w", "30d", "366d")
# weights of a timeline's steps: contact, preference, reaction, open or call end for nothing known, erase, malformed
KIND_MIXES = (
    (50, 12, 12, 6, 2, 5),
    (25, 50, 15, 3, 2, 2),  # wishes changing all the time: superseded and lifted facts kept for the late grace
    (35, 8, 45, 5, 1, 2),  # complaints and opt-outs, superseded by later ones
    (85, 3, 3, 5, 0, 2),  # contacts: caps and windows
)


def ts_forms(ts: int) -> list[str]:
    """``ts`` written in the ISO-8601 forms the parser accepts (all the same instant, fractions below a ms floored)."""
    utc = _EPOCH + timedelta(milliseconds=ts)
    ms = ts % 1000

    def clock(moment: datetime, sep: str = "T") -> str:
        return f"{moment:%Y-%m-%d}{sep}{moment:%H:%M:%S}"

    def shifted(minutes: int = 0, seconds: int = 0) -> datetime:
        return utc + timedelta(minutes=minutes, seconds=seconds)

    week = utc.isocalendar()
    forms = [iso_timestamp(ts, offset) for offset in (0, 60, -300, 330, 345, -210, 840, -720, 525)]
    forms += [
        f"{clock(utc)}.{ms:03d}Z",
        f"{clock(utc)}.{ms:03d}999Z",
        f"{clock(utc)}.{ms:03d}999999Z",
        f"{clock(utc)},{ms:03d}Z",
        f"{clock(utc, ' ')}.{ms:03d}Z",
        f"{clock(utc)}.{ms:03d}-00:00",
        f"{utc:%Y%m%dT%H%M%S}.{ms:03d}+0000",
        f"{shifted(330):%Y%m%dT%H%M%S}.{ms:03d}+0530",
        f"{clock(shifted(-60))}.{ms:03d}-01",
        f"{clock(shifted(330, 15))}.{ms:03d}+05:30:15",
        f"{week[0]:04d}-W{week[1]:02d}-{week[2]}T{utc:%H:%M:%S}.{ms:03d}Z",
    ]
    if ms % 100 == 0:
        forms.append(f"{clock(utc)}.{ms // 100}Z")
    if ms == 0 and utc.second == 0:
        forms.append(f"{utc:%Y-%m-%dT%H:%M}Z")
        if utc.minute == 0:
            forms.append(f"{utc:%Y-%m-%dT%H}+00:00")
    return forms


def malformed_lines(customer: str, ts: int, number: int) -> list[bytes]:
    """Lines the parser refuses (and a few odd ones it accepts), for ``customer`` at ``ts``."""
    base = {"type": "contact", "event_id": f"m{number}", "customer_id": customer, "ts": ts, "channel": "sms"}

    def line(drop: Sequence[str] = (), /, **changes: Any) -> bytes:
        body = {name: value for name, value in base.items() if name not in drop}
        body.update(changes)
        return orjson.dumps(body)

    whole = line()
    iso = iso_timestamp(ts, 0, zulu=True)
    second = iso_timestamp(ts - ts % 1000, 0, zulu=True)  # without milliseconds
    call = {"type": "call_ended", "channel": None}
    pref = {"type": "preference", "channel": None}
    duration = line(**call, duration_s=12345)
    # the customer id with its first character escaped (still the same customer), non-ASCII ones as \uXXXX escapes
    escaped = (
        "".join(f"\\u{unit:04x}" for unit in _utf16_units(customer[0])) + orjson.dumps(customer[1:]).decode()[1:-1]
    )
    at = orjson.dumps(iso)
    return [
        # JSON the way other encoders write it: whitespace, escapes, key order, duplicate keys, odd numbers
        b" " + whole + b" ",
        whole + b"\n",
        b"\xef\xbb\xbf" + whole,
        whole + b"x",
        whole + b"{}",
        whole[:-1] + b",}",
        whole.replace(b'"contact"', b'"\\u0063ontact"', 1),
        whole.replace(b'"type"', b'"\\u0074ype"', 1),
        whole.replace(b'"sms"', b'"\\u0073ms"', 1),
        whole.replace(orjson.dumps(customer), f'"{escaped}"'.encode(), 1),
        whole.replace(b'"m', b'"\\u0000m', 1),
        whole.replace(b'"m', b'"\xc0\xafm', 1),
        whole.replace(b'"m', b'"\\/m', 1),
        whole[:-1] + b',"note":"\\"type\\":\\"erase\\""}',
        whole[:-1] + b',"tab":"a\tb"}',
        whole[:-1] + b',"deep":' + b"[" * 200 + b"]" * 200 + b"}",
        whole[:-1] + b',"deeper":' + b"[" * 1100 + b"]" * 1100 + b"}",
        whole[:-1] + b',"big":1e400}',
        whole[:-1] + b',"big":123456789012345678901234567890}',
        whole[:-1] + b',"tiny":1e-400}',
        line(ts=iso).replace(at, at[:-2] + b'\\u005a"', 1),
        whole.replace(f"{ts}".encode(), f"{ts}.0".encode(), 1),
        whole.replace(f"{ts}".encode(), f"{ts / 1e12:.12f}e12".encode(), 1),
        whole.replace(f"{ts}".encode(), f"0{ts}".encode(), 1),
        duration.replace(b"12345", b"30e0"),
        duration.replace(b"12345", b"3E1"),
        duration.replace(b"12345", b"29.9999999999999999"),
        duration.replace(b"12345", b"30.000000000000001"),
        duration.replace(b"12345", b"19.999999999999999"),
        duration.replace(b"12345", b"44.99999999999999999"),
        duration.replace(b"12345", b"1e-400"),
        duration.replace(b"12345", b"-0"),
        duration.replace(b"12345", b"-0.0e0"),
        duration.replace(b"12345", b"1e400"),
        duration.replace(b"12345", b"18446744073709551616"),
        # timestamps in forms Python's parser takes or refuses by a hair
        line(ts=second[:-1] + ".Z"),
        line(ts=second[:-1] + ",Z"),
        line(ts=second[:-1] + ".+01:00"),
        line(ts=second[:-1] + ".999999999999Z"),
        line(ts=iso.replace("T", "t")),
        line(ts=iso.replace("Z", " Z")),
        line(ts=iso + " "),
        line(ts=iso.replace("Z", "+00")),
        line(ts=iso.replace("Z", "-0000")),
        line(ts=second[:-1] + ".5+05:30:15.123456"),
        # refused outright
        b"",
        b"{",
        b"{'type': 'contact'}",
        b"[1,2,3]",
        b"null",
        b'"contact"',
        b"42",
        whole[:-1],
        whole.replace(b'"m', b'"\xff', 1),
        whole.replace(b'"m', b'"\\ud800', 1),
        whole.replace(b'"m', b'"\\ud83d\\ude00', 1),  # an astral character, escaped: valid
        whole.replace(b'"type":"contact"', b'"type":"contact","type":"erase"', 1),
        whole.replace(b'"channel":"sms"', b'"channel":"sms","channel":"fax"', 1),
        line(("type",)),
        line(("event_id",)),
        line(("customer_id",)),
        line(("ts",)),
        line(("channel",)),
        line(type="Contact"),
        line(type=7),
        line(type=None),
        line(channel="fax"),
        line(channel=["sms"]),
        line(category="promo"),
        line(category=None),
        line(ts=iso.replace("Z", "z")),
        line(ts=iso[:-1]),
        line(ts=" " + iso),
        line(ts="yesterday"),
        line(ts=ts // 1000),
        line(ts=float(ts)),
        line(ts=True),
        line(ts=-1),
        line(ts="2100-01-01T00:00:00Z"),
        line(ts=4_102_444_800_000),
        line(ts=4_102_444_799_999),
        line(ts="1999-12-31T23:59:59.999Z"),
        line(ts=946_684_800_000),
        line(ts="2026-11-02T24:00:00Z"),
        line(ts="2026-02-29T10:00:00Z"),
        line(ts="2028-02-29T10:00:00+14:00"),
        line(ts="2026-11-02T09:00:00+24:00"),
        line(ts="2026-11-02T09.5Z"),
        line(ts="2026-11-02T09:00:00.5.5Z"),
        line(ts="２026-11-02T09:00:00Z"),
        whole.replace(f"{ts}".encode(), b"18446744073709551616", 1),
        whole.replace(f"{ts}".encode(), b"1.7936e12", 1),
        line(event_id=""),
        line(event_id="x" * 129),
        line(event_id="é" * 128),
        line(event_id="é" * 129),
        line(event_id="😀" * 128),
        line(event_id=12345),
        line(customer_id=""),
        line(customer_id=7),
        line(sender=7),
        line(sender="ü" * 128),
        line(sender="ü" * 129),
        line(campaign=["a"]),
        line(**call, duration_s=None),
        line(**call, duration_s="30"),
        line(**call, duration_s=True),
        line(**call, duration_s=-1),
        line(**call, duration_s=-0.0),
        line(**call, duration_s=30, answered=1),
        line(**call, duration_s=30, ref=""),
        line(**call, duration_s=30, ref=5),
        line(type="email_opened", channel=None),
        line(type="email_opened", ref=None),
        line(type="email_opened", ref="e1", machine="yes"),
        line(type="unsubscribe", channel=None),
        line(type="complaint", channel="fax"),
        line(type="sms_stop", channel="fax"),
        line(**pref),
        line(type="preference"),
        line(**pref, opt_out="yes"),
        line(**pref, opt_out=None),
        line(**pref, max_contacts={"count": 257, "window": "7d"}),
        line(**pref, max_contacts={"count": -1, "window": "7d"}),
        line(**pref, max_contacts={"count": 2, "window": "0s"}),
        line(**pref, max_contacts={"count": 2, "window": "367d"}),
        line(**pref, max_contacts={"count": True, "window": "7d"}),
        line(**pref, max_contacts={"count": 2.0, "window": "7d"}),
        line(**pref, max_contacts={"count": 2}),
        line(**pref, max_contacts=[]),
        line(**pref, quiet_hours={"start": "24:00", "end": "08:00"}),
        line(**pref, quiet_hours={"start": "9:00", "end": "08:00"}),
        line(**pref, quiet_hours={"start": "21:00"}),
        line(**pref, quiet_hours={"start": "２1:00", "end": "08:00"}),
        line(**pref, quiet_hours="21:00-08:00"),
        line(**pref, timezone="Nowhere/Zone"),
        line(**pref, timezone=""),
        line(**pref, timezone="../etc/passwd"),
        line(**pref, timezone="Europe/Paris "),
        line(**pref, timezone=5),
        line(**pref, timezone="utc"),
        line(type="erase", trace={"nested": [1, {"x": None}]}),
        line(note="x" * 17_000),
        line(note="x" * 700),
    ]


def _utf16_units(character: str) -> list[int]:
    data = character.encode("utf-16-be")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


class Chooser:
    """Where a timeline's choices come from: hypothesis (shrinks to a small example) or a seeded ``random.Random``
    (fast: many more timelines per second). Every choice is an integer in a range, the cheapest hypothesis draw."""

    def integer(self, low: int, high: int) -> int:
        raise NotImplementedError

    def pick(self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]

    def one_in(self, count: int) -> bool:
        return self.integer(0, count - 1) == 0

    def weighted(self, weights: Sequence[int]) -> int:
        """An index into ``weights``, drawn with those weights (shrinks towards the first)."""
        roll = self.integer(0, sum(weights) - 1)
        for index, weight in enumerate(weights):
            roll -= weight
            if roll < 0:
                return index
        return len(weights) - 1

    def shuffled(self, items: list[T]) -> list[T]:
        items = list(items)
        for index in range(len(items) - 1, 0, -1):
            other = self.integer(0, index)
            items[index], items[other] = items[other], items[index]
        return items


class DrawChooser(Chooser):
    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def integer(self, low: int, high: int) -> int:
        value: int = self.draw(st.integers(low, high))
        return value


class RandomChooser(Chooser):
    def __init__(self, seed: int | str) -> None:
        self.rng = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)


def make_timeline(choose: Chooser, max_steps: int = 40) -> list[bytes]:
    """A few customers' dense histories of every event type, as raw lines in arrival order."""
    customers = CUSTOMERS[: choose.integer(1, len(CUSTOMERS))]
    clock = choose.pick(STARTS)
    kinds = choose.pick(KIND_MIXES)
    toggles = kinds == KIND_MIXES[1]
    dense = choose.one_in(3)  # events minutes apart: many within one late grace, window or deadline
    late_weights = choose.pick(((70, 10, 8, 5, 7), (30, 20, 20, 15, 15)))
    # email, sms, call; and how often an email is opened: marketing mail left unread in a row blocks email
    channels = choose.pick((("email", "sms", "call"), ("email", "email", "email", "email", "sms", "call")))
    open_odds = choose.pick((2, 6))
    queue: list[tuple[int, int, bytes]] = []  # (arrival, sequence, line)
    sequence = itertools.count()
    numbers = itertools.count(1)
    emails: list[tuple[str, str, int]] = []  # (customer, event_id, ts) of every email contact
    ids: list[str] = []  # every event id used

    def push(arrival: int, line: bytes) -> None:
        queue.append((arrival, next(sequence), line))

    def render_ts(ts: int) -> str | int:
        kind = choose.weighted((35, 35, 30))
        if kind == 0:
            return ts
        if kind == 1:
            return iso_timestamp(ts, 0, zulu=True)
        return choose.pick(ts_forms(ts))

    def lateness() -> int:
        kind = choose.weighted(late_weights)
        if kind == 0:
            return 0
        if kind == 1:
            return choose.integer(1, HOUR)
        if kind == 2:
            return choose.integer(HOUR, DAY - 1)
        if kind == 3:
            return choose.pick(LATE_EDGES)
        return choose.integer(DAY, 3 * DAY)

    def emit(body: dict[str, Any], ts: int) -> None:
        body["ts"] = render_ts(ts)
        if choose.one_in(10):  # another key order
            body = {name: body[name] for name in choose.shuffled(list(body))}
        if choose.one_in(20):
            body["trace_id"] = "t-1"  # unknown fields are ignored
        line = orjson.dumps(body)
        arrival = ts + lateness()
        push(arrival, line)
        ids.append(body["event_id"])
        if choose.one_in(20):  # the same bytes again
            push(arrival + choose.pick((0, 1, SECOND, HOUR, DAY - 1, DAY + 1, 3 * DAY)), line)

    def base(event_type: str, customer: str) -> dict[str, Any]:
        # now and then an id used before, with other content
        event_id = choose.pick(ids) if ids and choose.one_in(30) else f"e{next(numbers)}"
        return {"type": event_type, "event_id": event_id, "customer_id": customer}

    def channel() -> str:
        return choose.pick(channels)

    def opened(customer: str, ref: str, ts: int) -> None:
        body = base("email_opened", customer)
        body["ref"] = ref
        machine = choose.pick((None, False, False, True))
        if machine is not None:
            body["machine"] = machine
        emit(body, ts)

    def call_ended(customer: str, ref: str | None, called: int) -> None:
        body = base("call_ended", customer)
        duration = choose.pick(DURATIONS)
        body["duration_s"] = duration
        answered = choose.pick((None, True, True, False))
        if answered is not None:
            body["answered"] = answered
        if ref is not None:
            body["ref"] = ref
        ring = choose.pick((0, 5 * SECOND, 40 * SECOND))
        emit(body, called + ring + (int(duration * 1000) if duration < 1e6 else 0))

    def preference(customer: str, ts: int) -> None:
        body = base("preference", customer)
        scope = choose.weighted((5, 4, 1))
        if scope == 1:
            body["channel"] = channel()
        elif scope == 2:
            body["channel"] = None
        wishes = choose.shuffled(["opt_out", "max_contacts", "quiet_hours", "timezone"])
        if toggles and choose.one_in(2):
            wishes = ["opt_out"]  # opted out and in again and again: more lifted opt-outs than the state keeps
        for name in wishes[: 1 + choose.weighted((6, 3, 1))]:
            cleared = choose.one_in(6)
            if name == "opt_out":
                body["opt_out"] = choose.pick((True, False))
            elif name == "max_contacts":
                cap = {"count": choose.pick((0, 1, 1, 2, 3, 5, 256)), "window": choose.pick(WINDOWS)}
                body["max_contacts"] = None if cleared else cap
            elif name == "quiet_hours":
                hours = {"start": choose.pick(CLOCKS), "end": choose.pick(CLOCKS)}
                body["quiet_hours"] = None if cleared else hours
            else:
                zone = choose.pick(ODD_ZONES) if choose.one_in(10) else choose.pick(ZONES)
                body["timezone"] = None if cleared else zone
        emit(body, ts)

    for _ in range(choose.integer(1, max_steps)):
        if dense:
            clock += choose.pick(GAPS[:9]) if choose.one_in(2) else choose.integer(0, HOUR)
        elif choose.one_in(10):
            clock += choose.pick(GAPS_LONG)
        elif choose.one_in(3):
            clock += choose.integer(0, 2 * DAY)
        else:
            clock += choose.pick(GAPS)
        customer = choose.pick(customers)
        kind = choose.weighted(kinds)
        if kind == 0:
            body = base("contact", customer)
            medium = channel()
            body["channel"] = medium
            category = choose.pick((None, "marketing", "marketing", "service", "transactional"))
            if category is not None:
                body["category"] = category
            for name, options in (("sender", SENDERS), ("campaign", CAMPAIGNS)):
                value = choose.pick(options)
                if value is not None:
                    body[name] = value
            emit(body, clock)
            if medium == "email":
                emails.append((customer, body["event_id"], clock))
                if choose.one_in(open_odds):
                    opened(customer, body["event_id"], clock + choose.pick((*OPEN_DELAYS, -MINUTE)))
            elif medium == "call" and not choose.one_in(5):
                call_ended(customer, None if choose.one_in(4) else body["event_id"], clock)
        elif kind == 1:
            preference(customer, clock)
        elif kind == 2:
            reaction = choose.pick(("unsubscribe", "complaint", "complaint", "sms_stop"))
            body = base(reaction, customer)
            if reaction != "sms_stop":
                body["channel"] = channel()
            emit(body, clock)
        elif kind == 3:
            # an open for an email sent earlier, later (delivered first) or never; a call's end without its call
            known = [email for email in emails if email[0] == customer]
            what = choose.integer(0, 2)
            if what == 0 and known:
                _, ref, sent = choose.pick(known)
                opened(customer, ref, sent + choose.pick(OPEN_DELAYS))
            elif what <= 1:
                opened(customer, f"e{choose.integer(1, 2 * max_steps)}", clock)
            else:
                call_ended(customer, None, clock)
        elif kind == 4:
            emit(base("erase", customer), clock)
        else:
            push(clock, choose.pick(malformed_lines(customer, clock, next(numbers))))
    queue.sort()
    return [line for _, _, line in queue]


@st.composite
def timelines(draw: st.DrawFn) -> list[bytes]:
    return make_timeline(DrawChooser(draw))


@pytest.mark.parametrize("policy_name", POLICY_NAMES)
def test_seeded_timelines(policy_name):
    """Many timelines from seeded generators: volume (the hypothesis test below finds small examples)."""
    policy = policy_by_name(policy_name)
    for number in range(SEEDED_TIMELINES):
        seed = f"{policy_name}-{number}"
        lines = make_timeline(RandomChooser(seed))
        assert_same(policy, lines, label=f"the timeline make_timeline(RandomChooser({seed!r}))")


@pytest.mark.parametrize("policy_name", POLICY_NAMES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(lines=timelines())
def test_timelines(policy_name, lines):
    assert_same(policy_by_name(policy_name), lines, label="a hypothesis timeline")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(keyed_messages(("a", "b", "c")), min_size=1, max_size=30),
    check_key=st.booleans(),
    policy_name=st.sampled_from(("default", "small", "tcpa")),
)
def test_hostile_messages(messages, check_key, policy_name):
    """Arbitrary bytes, event-like objects and spoilt events (tests/strategies.py), keys checked or not."""
    keys = [key for key, _ in messages]
    lines = [value for _, value in messages]
    assert_same(policy_by_name(policy_name), lines, keys, check_key=check_key, label="hostile messages")


@pytest.mark.parametrize("policy_name", ["default", "small", "reg-f"])
def test_odd_and_malformed_lines(policy_name):
    """Every odd or malformed line of the timelines, each with its own event id, for every customer in turn."""
    lines = []
    for number, customer in enumerate(CUSTOMERS):
        ts = T0 + number * HOUR + 123
        lines.append(
            orjson.dumps({"type": "contact", "event_id": "x", "customer_id": customer, "ts": ts, "channel": "sms"})
        )
        for index, line in enumerate(malformed_lines(customer, ts, 7)):
            lines.append(line.replace(b'm7"', f'm7-{number}-{index}"'.encode(), 1))
    assert_same(policy_by_name(policy_name), lines, label="the odd and malformed lines")


def storm_lines() -> list[bytes]:
    """One customer changing everything every few minutes: more lifted opt-outs, superseded complaints,
    conversations, quiet hours and time zones than the state keeps for the late grace; then late contacts made
    between those changes, and a day later, when all of it has expired."""
    lines: list[bytes] = []
    numbers = itertools.count()

    def send(**body: Any) -> None:
        lines.append(orjson.dumps({"event_id": f"s{next(numbers)}", "customer_id": "storm", **body}))

    channels = ("email", "sms", "call")
    ts = T0
    for index in range(40):
        ts += 7 * MINUTE
        send(type="preference", ts=ts, channel="sms", opt_out=index % 2 == 0)
        send(type="complaint", ts=ts + 1, channel=channels[index % 3])
        send(type="call_ended", ts=ts + 2, duration_s=300)
        hours = {"start": f"{index % 24:02d}:00", "end": f"{(index + 3) % 24:02d}:30"}
        send(type="preference", ts=ts + 3, channel=channels[(index + 1) % 3], quiet_hours=hours)
        send(type="preference", ts=ts + 4, timezone=ZONES[index % len(ZONES)])
        send(type="contact", ts=ts + 5, channel=channels[index % 3], sender="on-time")
    for index in range(40):
        send(type="contact", ts=T0 + 7 * MINUTE * (index + 1) + 6, channel=channels[(index + 2) % 3], sender="late")
    for index in range(3):
        send(type="contact", ts=ts + DAY + index * HOUR, channel=channels[index], sender="next day")
        send(type="contact", ts=ts + 12 * HOUR + index, channel=channels[index], sender="late, next day")
    return lines


@pytest.mark.parametrize("policy_name", ["default", "tcpa", "reg-f", "grace-36h"])
def test_more_changes_than_the_state_keeps(policy_name):
    policy = policy_by_name(policy_name)
    lines = storm_lines()
    python = Replay(Guard(policy))
    kept: dict[str, int] = {}
    for line in lines:
        python.feed(line)
        state = python.states["storm"]
        for name in ("lifted_opt_outs", "superseded_signals", "superseded_facts"):
            kept[name] = max(kept.get(name, 0), len(getattr(state, name)))
    assert min(kept.values()) == 16, kept  # the bound (engine._MAX_KEPT_FOR_GRACE) is reached: what it tests
    assert_same(policy, lines, label="the storm of changes")


def test_timestamp_forms_are_the_same_instant():
    """The timelines' timestamp forms are valid and mean what they say (else the timelines would be less dense)."""
    from fatigue.timeutil import parse_iso_ms

    for ts in (T0, T0 + 1, T0 + 999, T0 + DAY - 1, STARTS[2] + 5 * HOUR + 59 * MINUTE + 59_999):
        for form in ts_forms(ts):
            assert parse_iso_ms(form) == ts, form


# ---------------------------------------------------------------------------------------------- timeline tests

# modules whose tests drive fatigue.testing.Scenario: their event lists are re-sent through both replays
TIMELINE_MODULES = (
    "test_engine_boundaries",
    "test_engine_caps",
    "test_engine_preferences",
    "test_engine_signals",
    "test_preference_edges",
    "test_preset_edges",
    "test_policy_edges",
    "test_inspect_erase",
)


_FIXTURES = frozenset({"tmp_path"})  # the only fixtures the timeline tests use; given a fresh directory


def _parameter_sets(function: Callable[..., Any]) -> Iterator[dict[str, Any]] | None:
    """Every call of a (possibly parametrized) test function, fixtures left out; None when it needs other fixtures."""
    marks = [mark for mark in getattr(function, "pytestmark", []) if mark.name == "parametrize"]
    axes: list[list[dict[str, Any]]] = []
    for mark in marks:
        names = mark.args[0]
        names = [name.strip() for name in names.split(",")] if isinstance(names, str) else list(names)
        calls = []
        for values in mark.args[1]:
            if isinstance(values, tuple) and hasattr(values, "marks") and hasattr(values, "id"):
                values = values.values  # type: ignore[attr-defined]  # pytest.param(...), a ParameterSet
            elif len(names) == 1:
                values = (values,)
            calls.append(dict(zip(names, values, strict=True)))
        axes.append(calls)
    wanted = set(inspect.signature(function).parameters)
    given_names = {name for axis in axes for call in axis[:1] for name in call}
    if wanted - given_names - _FIXTURES or given_names - wanted:
        return None
    return ({name: value for call in product for name, value in call.items()} for product in itertools.product(*axes))


def harvested_timelines(module_name: str) -> list[tuple[str, Policy, list[bytes]]]:
    """(label, policy, lines) of every Scenario that the tests of ``module_name`` build, in the order they send."""
    module = importlib.import_module(f"tests.unit.{module_name}")
    recorded: list[tuple[str, Scenario, list[bytes]]] = []
    current = [""]
    original = Scenario.send

    def send(self: Scenario, body: dict[str, Any]) -> Any:
        step = original(self, body)
        lines = self.__dict__.get("_parity_lines")
        if lines is None:
            lines = self.__dict__["_parity_lines"] = []
            recorded.append((current[0], self, lines))
        lines.append(orjson.dumps(body))  # the very bytes Scenario.send parsed (it fills in the ids first)
        return step

    Scenario.send = send  # type: ignore[method-assign]
    try:
        for name, function in sorted(vars(module).items()):
            if not name.startswith("test_") or not callable(function) or hasattr(function, "hypothesis"):
                continue
            calls = _parameter_sets(function)
            fixtures = _FIXTURES & set(inspect.signature(function).parameters)
            for number, arguments in enumerate(calls or ()):
                current[0] = f"{module_name}.{name}" + (f"[{number}]" if arguments else "")
                with tempfile.TemporaryDirectory() as directory:
                    try:
                        function(**arguments, **dict.fromkeys(fixtures, Path(directory)))
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except BaseException:  # its own assertion failing is its own test's business
                        pass
    finally:
        Scenario.send = original  # type: ignore[method-assign]
    found = []
    for count, (label, scenario, lines) in enumerate(recorded):
        if lines:
            found.append((f"{label} (scenario #{count + 1})", scenario.guard.policy, lines))
    return found


@pytest.mark.parametrize("module_name", TIMELINE_MODULES)
def test_timeline_tests_event_lists(module_name):
    timelines_found = harvested_timelines(module_name)
    assert timelines_found, f"no Scenario found in {module_name}"
    for label, policy, lines in timelines_found:
        assert_same(policy, lines, label=label)


# ---------------------------------------------------------------------------------------------- as a script


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.unit.test_native_parity",
        description="Replay a stream through the Python and the native replay in lock step; print the first "
        "divergence (exit 1) or that there is none (exit 0).",
    )
    parser.add_argument("--policy", default="default", help="a name (--list-policies) or a TOML file")
    parser.add_argument("--all-policies", action="store_true", help="every named policy in turn")
    parser.add_argument("--list-policies", action="store_true")
    parser.add_argument("--file", help="a JSON-lines file instead of a generated stream")
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skew", type=float, default=1.0)
    parser.add_argument("--check-key", action="store_true", help="generated messages with their keys, checked")
    parser.add_argument("--customer", help="only this customer's lines")
    parser.add_argument("--flush-at", default="end", help="end (default), never, epoch ms or ISO-8601")
    parser.add_argument("--history", type=int, default=30, help="earlier lines of the customer to show")
    parser.add_argument(
        "--timelines", type=int, default=0, help="instead of a stream: N seeded timelines (as the tests make them)"
    )
    parser.add_argument("--first-timeline", type=int, default=0, help="with --timelines: the first seed number")
    parser.add_argument("--steps", type=int, default=40, help="with --timelines: at most this many steps each")
    args = parser.parse_args(argv)
    if args.list_policies:
        for name in POLICY_NAMES:
            print(f"{name:<22} {policy_by_name(name).source}")
        return 0
    problem = native_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    names = POLICY_NAMES if args.all_policies else (args.policy,)
    if args.timelines:
        return _sweep_timelines(names, range(args.first_timeline, args.first_timeline + args.timelines), args)
    keys: list[bytes | None] | None = None
    if args.file:
        lines = [line for line in Path(args.file).read_bytes().splitlines() if line.strip()]
        label = args.file
    else:
        label = f"{args.events} events / {args.customers} customers, seed {args.seed}, skew {args.skew:g}"
        if args.check_key:
            messages = list(generate_messages(args.events, args.customers, args.seed, skew=args.skew))
            keys = [key for key, _ in messages]
            lines = [value for _, value in messages]
        else:
            lines = list(generate_events(args.events, args.customers, args.seed, skew=args.skew))
    if args.customer:
        wanted = args.customer.encode()
        kept = [i for i, line in enumerate(lines) if _customer_bytes(line) == wanted]
        lines = [lines[i] for i in kept]
        keys = None if keys is None else [keys[i] for i in kept]
        label += f", customer {args.customer} only"
    status = 0
    for name in names:
        policy = policy_by_name(name)
        divergence = first_divergence(
            policy, lines, keys, check_key=args.check_key, flush_at=args.flush_at, label=label
        )
        if divergence is None:
            print(f"{name}: no divergence over {len(lines):,} lines ({label})")
        else:
            print(divergence.report(args.history))
            status = 1
    return status


def _sweep_timelines(names: Sequence[str], numbers: range, args: argparse.Namespace) -> int:
    status = 0
    for name in names:
        policy = policy_by_name(name)
        for number in numbers:
            seed = f"{name}-{number}"
            lines = make_timeline(RandomChooser(seed), max_steps=args.steps)
            label = f"the timeline make_timeline(RandomChooser({seed!r}), max_steps={args.steps})"
            divergence = first_divergence(policy, lines, flush_at=args.flush_at, label=label)
            if divergence is not None:
                print(divergence.report(args.history))
                status = 1
                break
        else:
            print(f"{name}: no divergence over {len(numbers):,} timelines (seeds {numbers.start}..{numbers.stop - 1})")
    return status


def _customer_bytes(line: bytes) -> bytes | None:
    try:
        body = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    customer = body.get("customer_id") if isinstance(body, dict) else None
    return customer.encode() if isinstance(customer, str) else None


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------------------------------- every time zone


def _offset_changes(zone: Any, start_ms: int, days: int) -> list[int]:
    """The instants (ms) at which ``zone``'s UTC offset changes within ``days`` from ``start_ms``."""
    from datetime import datetime

    def offset(ms: int) -> Any:
        return datetime.fromtimestamp(ms / 1000, zone).utcoffset()

    changes = []
    for day in range(days):
        low, high = start_ms + day * 86_400_000, start_ms + (day + 1) * 86_400_000
        if offset(low) == offset(high):
            continue
        while high - low > 1:  # the first millisecond of the new offset
            middle = (low + high) // 2
            low, high = (middle, high) if offset(middle) == offset(low) else (low, middle)
        changes.append(high)
    return changes


def test_quiet_hours_in_every_time_zone():
    """The native core asks Python for a zone's offset once per quarter of an hour and derives the local minute
    of every contact in that quarter from it; the Python engine places each contact itself. For every zone Python
    knows: contacts one millisecond either side of local 12:00 and 12:30 (the edges of a 12:00-12:30 quiet-hours
    rule) on random days of 2000-2099 and on the days the zone's offset changes in 2026; and around each of those
    changes, the customer's own quiet hours set to the one local minute the change starts, with contacts one
    millisecond either side of it. An offset wrong by a minute, or a change placed in the wrong quarter, flips a
    violation."""
    import random
    from datetime import datetime
    from zoneinfo import ZoneInfo, available_timezones

    data = _shipped("tcpa")
    data["quiet_hours"] = {"id": "quiet.noon", "start": "12:00", "end": "12:30", "channels": ["email", "sms", "call"]}
    data["caps"] = []  # nothing but quiet hours to judge a contact on
    policy = policy_from_mapping(data)
    rng = random.Random(5)
    year_2026 = 1_767_225_600_000
    lines: list[bytes] = []
    expected_violations = 0
    for number, name in enumerate(sorted(available_timezones())):
        zone = ZoneInfo(name)
        customer = f"tz-{number}"
        events: list[tuple[int, dict[str, Any]]] = [(946_684_800_000, {"type": "preference", "timezone": name})]
        changes = _offset_changes(zone, year_2026, 365)
        days = [datetime.fromtimestamp(rng.randrange(946_771_200, 4_070_908_800), zone).date() for _ in range(3)]
        days += [datetime.fromtimestamp(change / 1000, zone).date() for change in changes]
        for day in days:
            for hour, minute in ((12, 0), (12, 30)):
                edge = int(datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone).timestamp() * 1000)
                events += [(edge - 1, {"type": "contact"}), (edge, {"type": "contact"})]
                expected_violations += minute == 0
        for change in changes:
            local = datetime.fromtimestamp(change / 1000, zone)
            start = local.hour * 60 + local.minute
            end = (start + 1) % 1440
            hours = {"start": f"{start // 60:02d}:{start % 60:02d}", "end": f"{end // 60:02d}:{end % 60:02d}"}
            events.append((change - 2, {"type": "preference", "quiet_hours": hours}))
            events += [(change - 1, {"type": "contact"}), (change, {"type": "contact"})]
            expected_violations += 1
        for index, (at, event) in enumerate(sorted(events, key=lambda item: item[0])):
            body = {**event, "event_id": f"{customer}-{index}", "customer_id": customer, "ts": at}
            if event["type"] == "contact":
                body["channel"] = "sms"
            lines.append(orjson.dumps(body))
    # many contacts judged, many of them in quiet hours (the Python side is the oracle; this only shows the test
    # is not vacuous)
    python = Replay(Guard(policy))
    quiet = sum(v["kind"] == "quiet_hours" for line in lines for v in python.feed(line).violations)
    assert len(lines) > 10_000 and quiet >= expected_violations > 1_000
    assert_same(policy, lines, label="every zone")
