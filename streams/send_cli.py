"""``fatigue send``: produce contract events to the guard's input topic, checked first as the worker checks them.

Every event goes through the core's own parser (:func:`fatigue.events.parse_event`, with the worker's rule that the
key is the ``customer_id``) before anything is produced, so what ``send`` accepts the worker does not dead-letter
as malformed; by default a run with an invalid event sends nothing. The topic must already exist (it is never
auto-created), an absent broker is reported at once (nothing listens) or within ``--timeout`` (nothing answers),
and every record the broker refuses is reported with the broker's error.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import orjson

from fatigue.events import DEFAULT_MAX_EVENT_BYTES, MAX_ID_CHARS, Rejection, parse_event

EXIT_OK = 0
EXIT_REFUSED = 1  # an event was invalid (checked here) or refused by the broker
EXIT_SETUP = 2  # nothing could be tried: options, input, policy, broker or topic
DEFAULT_TIMEOUT = "10s"
# A record not acknowledged this long after it was handed to the client, retries included, is reported as not sent.
# Longer than --timeout on purpose: a leader election on a replicated cluster is ridden out, not reported.
DELIVERY_TIMEOUT_MS = 120_000
LINGER_MS = 5
CLIENT_ID = "fatigue-send"


@dataclass(frozen=True, slots=True)
class Input:
    """One event as given: where it came from (for messages), its bytes, the key it is produced with."""

    where: str
    raw: bytes
    key: bytes | None
    event_id: str | None

    def label(self) -> str:
        if self.event_id is None:
            return self.where
        shown = self.event_id if len(self.event_id) <= MAX_ID_CHARS else self.event_id[:MAX_ID_CHARS] + "…"
        return f"{self.where} (event_id {orjson.dumps(shown).decode()})"


class SetupError(Exception):
    """Nothing can be sent (the broker, the topic); the message says what to do."""


def read_inputs(arguments: Sequence[str], stdin: IO[bytes]) -> list[Input]:
    """The events given as arguments or, when there are none, as JSON lines on stdin (blank lines skipped)."""
    if arguments:
        # os.fsencode gives back the very bytes the shell passed, also ones that are not UTF-8 (checked: bad_utf8)
        given = [(f"argument {number}", os.fsencode(argument)) for number, argument in enumerate(arguments, 1)]
    else:
        given = [(f"line {number}", line.strip()) for number, line in enumerate(stdin, 1) if line.strip()]
    return [Input(where, raw, *_identify(raw)) for where, raw in given]


def _identify(raw: bytes) -> tuple[bytes | None, str | None]:
    """The record key (the customer_id: the worker's rule, and murmur2 on it picks the partition) and the event_id,
    when the event has them; also for --raw, so a malformed event still lands where the worker expects it."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    customer_id, event_id = body.get("customer_id"), body.get("event_id")
    return (
        customer_id.encode() if isinstance(customer_id, str) else None,
        event_id if isinstance(event_id, str) else None,
    )


def check(inputs: Iterable[Input], max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> list[tuple[Input, Rejection]]:
    """The events the worker would dead-letter as malformed, with its reasons: the core's checks and the key rule.

    What depends on a customer's state (``duplicate``, ``late``) cannot be known here and is left to the worker.
    """
    invalid: list[tuple[Input, Rejection]] = []
    for item in inputs:
        parsed = parse_event(item.raw, item.key, check_key=True, max_bytes=max_bytes)
        if isinstance(parsed, Rejection):
            invalid.append((item, parsed))
    return invalid


def parse_timeout(text: str) -> float:
    """``10s``, ``500ms``, ``2m`` or plain seconds (``10``, ``2.5``) -> seconds."""
    from fatigue.timeutil import parse_duration_ms

    try:
        seconds = parse_duration_ms(text) / 1000 if not text.replace(".", "", 1).isdigit() else float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fatigue send",
        description="Produce contract events to the guard's input topic, keyed by their customer_id (murmur2 "
        "partitioner, as Java clients), acks=all. Every event is first checked as the worker checks it; a run with "
        "an invalid event sends nothing.",
        epilog="Exit status: 0 every event sent; 1 an event invalid (nothing sent, unless --skip-invalid) or refused "
        "by the broker (the others are sent); 2 nothing tried: bad options or policy, broker unreachable, topic "
        "missing.",
    )
    parser.add_argument(
        "events", nargs="*", help="JSON events; without any, JSON lines are read from stdin (e.g. < events.jsonl)"
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("FATIGUE_BOOTSTRAP", "127.0.0.1:19092"),
        help="Kafka bootstrap servers (default: $FATIGUE_BOOTSTRAP or %(default)s)",
    )
    parser.add_argument(
        "--topic",
        default=os.environ.get("FATIGUE_EVENTS_TOPIC", "fatigue.events.v1"),
        help="input topic; it must exist, it is never created here (default: $FATIGUE_EVENTS_TOPIC or %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=parse_timeout,
        default=parse_timeout(DEFAULT_TIMEOUT),
        metavar="DURATION",
        help=f"how long to wait for the broker to answer: connecting, the topic lookup, each request (e.g. 10s, "
        f"500ms; default {DEFAULT_TIMEOUT}); a record not acknowledged within {DELIVERY_TIMEOUT_MS // 1000}s, "
        f"retries included, is reported as not sent",
    )
    parser.add_argument(
        "--policy",
        default=os.environ.get("FATIGUE_POLICY"),
        help="the worker's policy file, for its input.max_event_bytes (default: $FATIGUE_POLICY, else "
        f"{DEFAULT_MAX_EVENT_BYTES} bytes)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--raw",
        action="store_true",
        help="send the events as given, unchecked (e.g. malformed ones, to exercise the worker's dead-letter "
        "path); still keyed by their customer_id when they have one",
    )
    mode.add_argument(
        "--skip-invalid", action="store_true", help="send the valid events of a run that has invalid ones"
    )
    return parser


def _say(message: str) -> None:
    print(f"fatigue send: {message}", file=sys.stderr)


def send_main(argv: list[str]) -> int:
    """Check contract events (arguments, or JSON lines on stdin) and produce them keyed by their customer_id."""
    args = _parser().parse_args(argv)
    max_bytes = DEFAULT_MAX_EVENT_BYTES
    if args.policy and not args.raw:
        from fatigue.policy import PolicyError, load_policy

        try:
            max_bytes = load_policy(args.policy).max_event_bytes
        except PolicyError as error:
            _say(f"invalid policy: {error}")
            return EXIT_SETUP
    if not args.events and sys.stdin.isatty():
        _say("reading events from stdin, one JSON object per line; end with Ctrl-D")
    inputs = read_inputs(args.events, sys.stdin.buffer)

    # all are checked before anything is produced, so a run is not left half sent by its own mistakes
    invalid = [] if args.raw else check(inputs, max_bytes)
    for item, rejection in invalid:
        _say(f"{item.label()}: invalid: {rejection.reason}" + (f": {rejection.detail}" if rejection.detail else ""))
    if invalid and not args.skip_invalid:
        _say(f"{len(invalid)} of {len(inputs)} event(s) invalid; nothing sent (--skip-invalid sends the valid ones)")
        return EXIT_REFUSED
    rejected = {id(item) for item, _ in invalid}
    valid = [item for item in inputs if id(item) not in rejected]

    # the client's own log lines would repeat, unasked, what is reported below (and warn of retries it recovers from)
    logging.getLogger("kafka").addHandler(logging.NullHandler())
    timeout_ms = int(args.timeout * 1000)
    try:
        producer = connect(args.bootstrap, args.topic, timeout_ms)
    except SetupError as setup:
        _say(str(setup))
        return EXIT_SETUP
    failures = produce(producer, args.topic, valid, timeout_ms)

    for item, failure in failures:
        _say(f"{item.label()}: {describe_failure(failure)}")
    refused = sum(1 for _, failure in failures if _is_broker_error(failure))
    summary = f"sent {len(valid) - len(failures)} event(s) to {args.topic}"
    if refused:
        summary += f"; {refused} refused by the broker"
    if len(failures) > refused:
        summary += f"; {len(failures) - refused} not sent"
    if invalid:
        summary += f"; {len(invalid)} invalid, skipped"
    print(summary, file=sys.stderr)
    return EXIT_REFUSED if failures or invalid else EXIT_OK


def connect(bootstrap: str, topic: str, timeout_ms: int) -> Any:
    """A producer for ``topic``, once the broker has answered within ``timeout_ms`` that the topic exists."""
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.errors import KafkaError, UnknownTopicOrPartitionError, for_code

    seconds = f"{timeout_ms / 1000:g}s"
    refused = _all_refused(bootstrap)
    if refused:
        raise SetupError(
            f"no Kafka broker at {bootstrap}: {refused}; is it running? Set --bootstrap or FATIGUE_BOOTSTRAP"
        )
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id=CLIENT_ID,
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
        )
    except (KafkaError, ValueError, OSError) as error:
        raise SetupError(
            f"no Kafka broker answered at {bootstrap} within {seconds} ({error}); is it running? "
            "Set --bootstrap or FATIGUE_BOOTSTRAP, or a longer --timeout"
        ) from None
    try:
        # asked first, and the producer may not create it either: a mistyped topic on a cluster that auto-creates
        # topics would silently take the events where no worker reads them
        described = admin.describe_topics([topic])
    except KafkaError as error:
        raise SetupError(
            f"the broker at {bootstrap} did not describe topic {topic} within {seconds}: {error}"
        ) from None
    finally:
        admin.close()
    error_code = described[0].get("error_code") if described else UnknownTopicOrPartitionError.errno
    if error_code == UnknownTopicOrPartitionError.errno:
        from streams.settings import Settings

        raise SetupError(
            f"topic {topic} does not exist on {bootstrap}, and send does not create it. The worker creates its "
            f"topics when it starts (fatigue worker); or create it with the worker's partition count: "
            f"kafka-topics.sh --bootstrap-server {bootstrap} --create --topic {topic} --partitions "
            f"{Settings().partitions}. A different topic: --topic or FATIGUE_EVENTS_TOPIC"
        )
    if error_code:
        raise SetupError(f"cannot use topic {topic} on {bootstrap}: {for_code(error_code).__name__}")
    try:
        return KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=CLIENT_ID,
            acks="all",
            # Not idempotent, on purpose: kafka-python (3.0.x) puts an idempotent producer in a fatal state on the
            # first record the broker refuses and fails every later record with that record's error, so the report
            # would blame events the broker never saw. One request in flight keeps the order under retries, and a
            # duplicate from a retry is harmless: the guard drops a repeated event_id as `duplicate`.
            enable_idempotence=False,
            max_in_flight_requests_per_connection=1,
            linger_ms=LINGER_MS,
            allow_auto_create_topics=False,
            bootstrap_timeout_ms=timeout_ms,
            max_block_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
            delivery_timeout_ms=max(DELIVERY_TIMEOUT_MS, timeout_ms + LINGER_MS),
        )
    except (KafkaError, ValueError, OSError) as error:
        raise SetupError(f"cannot start a producer on {bootstrap} within {seconds}: {error}") from None


def _all_refused(bootstrap: str, probe_s: float = 1.0) -> str | None:
    """What every bootstrap address answered if each refused the connection at once, else None. Nothing listening
    is known without waiting for --timeout; an address that is slow or unreachable is left to the client, which
    waits for it (a broker being restarted, a slow network)."""
    answers = []
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=probe_s):
                return None
        except ConnectionRefusedError:
            answers.append(f"{address.strip()} refused the connection")
        except (OSError, ValueError):
            return None
    return ", ".join(answers) or None


def produce(producer: Any, topic: str, items: Sequence[Input], timeout_ms: int) -> list[tuple[Input, Exception]]:
    """Produce ``items`` in order and wait for each acknowledgement; the ones that failed, in input order."""
    from kafka.errors import KafkaError

    failed: dict[int, Exception] = {}
    futures: list[tuple[int, Any]] = []
    try:
        for index, item in enumerate(items):
            try:
                futures.append((index, producer.send(topic, key=item.key, value=item.raw)))
            except KafkaError as error:  # refused by the client itself, e.g. over its max_request_size (--raw)
                failed[index] = error
        deadline = time.monotonic() + (DELIVERY_TIMEOUT_MS + timeout_ms) / 1000
        for index, future in futures:
            # each future rather than producer.flush(): kafka-python's flush() raises "Future not done" once it has
            # split a batch the broker found too large, although the records of the halves are still delivered
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except KafkaError as error:
                failed[index] = error
    finally:
        producer.close(timeout=timeout_ms / 1000)
    return [(items[index], failed[index]) for index in sorted(failed)]


def _is_broker_error(error: Exception) -> bool:
    from kafka.errors import BrokerResponseError

    return isinstance(error, BrokerResponseError)


def describe_failure(error: Exception) -> str:
    """The broker's error code and name with its explanation, or the client's reason for not sending."""
    detail = error.args[0] if error.args and error.args[0] else None
    if _is_broker_error(error):
        # kafka-python's broker errors carry the protocol's name (MESSAGE_TOO_LARGE...), number and explanation
        name, number = getattr(error, "message", type(error).__name__), getattr(error, "errno", "?")
        return f"refused by the broker: {name} (error {number}): {detail or getattr(error, 'description', '')}"
    return f"not sent: {type(error).__name__}" + (f": {detail}" if detail else "")
