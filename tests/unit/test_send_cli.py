"""``fatigue send``'s checks before anything is produced, without a broker: what it accepts is what the worker's
parser accepts (with the key rule), an invalid event is named with its reason, and a run with one sends nothing."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka.errors import InvalidTimestampError, KafkaTimeoutError, MessageSizeTooLargeError

from fatigue.events import Rejection, parse_event
from streams import tools
from streams.send_cli import Input, check, describe_failure, parse_timeout, read_inputs, send_main

REPO = Path(__file__).resolve().parents[2]
TS = 1_795_435_200_000


def body(event_id: str = "e1", customer_id: str = "cust-1", **fields: Any) -> dict[str, Any]:
    return {"type": "contact", "event_id": event_id, "customer_id": customer_id, "ts": TS, "channel": "sms", **fields}


def raw(event_id: str = "e1", customer_id: str = "cust-1", **fields: Any) -> str:
    return orjson.dumps(body(event_id, customer_id, **fields)).decode()


def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


VALID = [
    raw(),
    raw(category="transactional", sender="crm", campaign="spring"),
    orjson.dumps({"type": "call_ended", "event_id": "c1", "customer_id": "x", "ts": TS, "duration_s": 3.5}).decode(),
    orjson.dumps({"type": "email_opened", "event_id": "o1", "customer_id": "x", "ts": TS, "ref": "e1"}).decode(),
    orjson.dumps({"type": "unsubscribe", "event_id": "u1", "customer_id": "x", "ts": TS, "channel": "email"}).decode(),
    orjson.dumps({"type": "sms_stop", "event_id": "s1", "customer_id": "x", "ts": "2026-11-23T10:00:00Z"}).decode(),
    orjson.dumps(
        {
            "type": "preference",
            "event_id": "p1",
            "customer_id": "x",
            "ts": TS,
            "quiet_hours": {"start": "21:00", "end": "08:00"},
        }
    ).decode(),
    orjson.dumps({"type": "erase", "event_id": "r1", "customer_id": "顧客-7", "ts": TS}).decode(),
]

INVALID = [  # (input, the worker's reason)
    ("not json", "bad_json"),
    ("[1, 2]", "not_object"),
    (orjson.dumps({k: v for k, v in body().items() if k != "ts"}).decode(), "missing_field:ts"),
    (raw(ts="2026-11-23T10:00:00"), "bad_timestamp"),  # no offset
    (raw(ts=1_795_435_200), "bad_timestamp"),  # seconds, not milliseconds
    (raw(channel="fax"), "unknown_channel"),
    (raw(customer_id=""), "bad_field:customer_id"),
    (raw(type="click"), "unknown_type"),
    (raw(note="x" * 17_000), "too_large"),
]


def inputs(*events: str) -> list[Input]:
    return read_inputs(list(events), io.BytesIO())


def run(argv: list[str], capsys: pytest.CaptureFixture[str], stdin: bytes = b"") -> tuple[int, str]:
    """send_main in this process, with ``stdin``; (exit status, stderr)."""
    old = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        status = send_main(argv)
    finally:
        sys.stdin = old
    return status, capsys.readouterr().err


def test_send_accepts_the_valid_events_of_every_type() -> None:
    assert check(inputs(*VALID)) == []


@pytest.mark.parametrize(("event", "reason"), INVALID)
def test_send_refuses_an_invalid_event_with_the_reason_the_worker_would_give(event: str, reason: str) -> None:
    ((item, rejection),) = check(inputs(event))
    assert rejection.reason == reason
    worker = parse_event(event.encode(), item.key, check_key=True)  # the worker's own call on the same record
    assert isinstance(worker, Rejection) and worker.reason == reason


def test_send_keys_each_event_by_its_customer_id_so_the_key_rule_holds() -> None:
    (item,) = inputs(raw(customer_id="cust-42"))
    assert item.key == b"cust-42"
    parsed = parse_event(item.raw, item.key, check_key=True)
    assert not isinstance(parsed, Rejection) and parsed.customer_id == "cust-42"
    # a record keyed otherwise is what the worker refuses: the rule send satisfies by construction
    wrong = Input("argument 1", item.raw, b"cust-43", "e1")
    assert [rejection.reason for _, rejection in check([wrong])] == ["key_mismatch"]
    assert [rejection.reason for _, rejection in check([Input("argument 1", item.raw, None, "e1")])] == ["missing_key"]


def test_send_reads_arguments_by_position_and_stdin_by_line_numbering_blank_lines() -> None:
    given = inputs(raw("a"), "not json", raw("c", "cust-3"))
    assert [(item.where, item.event_id, item.key) for item in given] == [
        ("argument 1", "a", b"cust-1"),
        ("argument 2", None, None),
        ("argument 3", "c", b"cust-3"),
    ]
    stdin = io.BytesIO(f"{raw('a')}\n\n   \n{raw('d')}\r\n".encode())
    assert [(item.where, item.raw) for item in read_inputs([], stdin)] == [
        ("line 1", raw("a").encode()),
        ("line 4", raw("d").encode()),
    ]


def test_send_checks_an_argument_that_is_not_utf8_as_the_bytes_given() -> None:
    (item,) = inputs(os.fsdecode(b'{"type":"contact","event_id":"\xff"}'))
    assert item.raw == b'{"type":"contact","event_id":"\xff"}'
    assert [rejection.reason for _, rejection in check([item])] == ["bad_utf8"]


def test_send_with_an_invalid_event_names_it_and_sends_nothing_without_trying_the_broker(
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    status, err = run(["--bootstrap", closed_port(), raw("ok"), raw("bad-1", channel="fax"), "not json"], capsys)
    assert status == 1
    assert 'argument 2 (event_id "bad-1"): invalid: unknown_channel: channel must be one of' in err
    assert "argument 3: invalid: bad_json" in err
    assert "2 of 3 event(s) invalid; nothing sent" in err
    assert "broker" not in err and time.monotonic() - started < 2  # it never connected


def test_send_on_stdin_names_the_line_of_an_invalid_event(capsys: pytest.CaptureFixture[str]) -> None:
    stdin = f"{raw('a')}\n\n{raw('b', ts='yesterday')}\n".encode()
    status, err = run(["--bootstrap", closed_port()], capsys, stdin=stdin)
    assert status == 1
    assert 'line 3 (event_id "b"): invalid: bad_timestamp' in err


def test_send_applies_the_worker_policys_size_limit(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policy = (REPO / "config/policies/default.toml").read_text()
    assert "max_event_bytes = 16384" in policy
    small = tmp_path / "small.toml"
    small.write_text(policy.replace("max_event_bytes = 16384", "max_event_bytes = 256"))
    status, err = run(["--bootstrap", closed_port(), "--policy", str(small), raw(note="x" * 300)], capsys)
    assert status == 1 and "invalid: too_large: " in err
    status, err = run(["--policy", str(tmp_path / "absent.toml"), raw()], capsys)
    assert status == 2 and "invalid policy" in err


def test_send_with_only_valid_events_goes_on_to_the_broker_and_reports_at_once_that_nothing_listens(
    capsys: pytest.CaptureFixture[str],
) -> None:
    closed = closed_port()
    started = time.monotonic()
    status, err = run(["--bootstrap", closed, "--timeout", "30s", raw()], capsys)
    assert status == 2
    assert f"no Kafka broker at {closed}: {closed} refused the connection" in err
    assert time.monotonic() - started < 10  # not the 30 s --timeout: a refused connection is an answer


def test_a_listener_that_never_answers_is_waited_for_up_to_the_timeout_then_reported(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as silent:  # the kernel completes connections to it; nothing ever replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        bootstrap = f"{closed_port()},127.0.0.1:{silent.getsockname()[1]}"
        status, err = run(["--bootstrap", bootstrap, "--timeout", "500ms", raw()], capsys)
    assert status == 2
    assert f"no Kafka broker answered at {bootstrap} within 0.5s" in err


def test_send_raw_and_skip_invalid_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        send_main(["--raw", "--skip-invalid", raw()])
    assert exited.value.code == 2


@pytest.mark.parametrize(("text", "seconds"), [("10s", 10.0), ("500ms", 0.5), ("2m", 120.0), ("3", 3.0), ("2.5", 2.5)])
def test_send_timeout_takes_a_duration_or_seconds(text: str, seconds: float) -> None:
    assert parse_timeout(text) == seconds


@pytest.mark.parametrize("text", ["0", "0s", "-1", "soon", "10 s"])
def test_send_timeout_refuses_what_is_not_a_positive_duration(text: str) -> None:
    with pytest.raises(Exception, match=r"not a duration|more than 0"):
        parse_timeout(text)


def test_send_describes_the_brokers_refusal_and_the_clients() -> None:
    assert describe_failure(MessageSizeTooLargeError(None)).startswith(
        "refused by the broker: MESSAGE_SIZE_TOO_LARGE (error 10): The server has a configurable maximum message size"
    )
    assert describe_failure(InvalidTimestampError("Timestamp 1 of message with offset 0 is out of range")) == (
        "refused by the broker: INVALID_TIMESTAMP (error 32): Timestamp 1 of message with offset 0 is out of range"
    )
    assert describe_failure(KafkaTimeoutError("Batch expired")) == "not sent: KafkaTimeoutError: Batch expired"


def test_send_is_still_what_the_cli_and_erase_call() -> None:
    assert tools.send_main is send_main


def test_send_help_explains_validation_raw_and_exit_status() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fatigue.cli", "send", "--help"], capture_output=True, text=True, cwd=REPO, check=True
    )
    text = " ".join(result.stdout.split())
    assert "--raw" in text and "unchecked" in text and "dead-letter" in text
    assert "Exit status: 0 every event sent; 1 an event invalid" in text
    assert "--timeout DURATION" in text
