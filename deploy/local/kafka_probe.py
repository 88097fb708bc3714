"""Readiness and inspection probe for deploy/local/stack.sh: real Kafka requests, standard library only.

    kafka_probe.py HOST:PORT                    exit 0 when the broker answers a Metadata request listing a broker
    kafka_probe.py HOST:PORT --min-brokers 3    ... listing at least 3 brokers (the cluster profile's readiness)
    kafka_probe.py ADDRS --quorum               the KRaft controller quorum: exit 0 when it has a leader
    kafka_probe.py ADDRS --topic NAME [--partition N]
                                                leader, replicas and in-sync replicas of a topic's partitions

ADDRS is HOST:PORT or a comma-separated list of them; the first broker that answers is used, so a list still
works while one broker is down. An open TCP port alone is not enough for readiness: a KRaft broker listens
before it has caught up with the metadata log and been unfenced.

Standard library only, so it runs before `make venv` and with any python3. Metadata v4 is served by every
broker since Kafka 1.0 up to 4.x and predates the "flexible" (tagged field) encoding of v9+, so its bytes are
easy to write by hand. DescribeQuorum (KRaft only) is flexible from its v0: compact strings and arrays, tagged
fields. A broker forwards it to the active controller, so its answer names the quorum's leader.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

METADATA_API_KEY = 3
METADATA_VERSION = 4
DESCRIBE_QUORUM_API_KEY = 55
DESCRIBE_QUORUM_VERSION = 0
METADATA_TOPIC = "__cluster_metadata"
CORRELATION_ID = 4242
CLIENT_ID = b"fatigue-stack-probe"

# The error codes a reader of this probe's output meets; others are printed by number.
ERRORS = {
    3: "UNKNOWN_TOPIC_OR_PARTITION",
    5: "LEADER_NOT_AVAILABLE",
    6: "NOT_LEADER_OR_FOLLOWER",
    7: "REQUEST_TIMED_OUT",
    15: "COORDINATOR_NOT_AVAILABLE",
    41: "NOT_CONTROLLER",
}


def _error_name(code: int) -> str:
    return ERRORS.get(code, f"error {code}")


class _Reader:
    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def _unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def int8(self) -> int:
        return self._unpack(">b")

    def int16(self) -> int:
        return self._unpack(">h")

    def int32(self) -> int:
        return self._unpack(">i")

    def int64(self) -> int:
        return self._unpack(">q")

    def string(self) -> str | None:
        length = self.int16()
        if length < 0:
            return None
        value = self.data[self.pos : self.pos + length].decode()
        self.pos += length
        return value

    def int32_array(self) -> list[int]:
        return [self.int32() for _ in range(self.int32())]

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    def compact_length(self) -> int:
        """Element count of a compact array or byte length of a compact string; -1 for null."""
        return self.uvarint() - 1

    def compact_string(self) -> str | None:
        length = self.compact_length()
        if length < 0:
            return None
        value = self.data[self.pos : self.pos + length].decode()
        self.pos += length
        return value

    def skip_tagged_fields(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.pos += self.uvarint()  # size, then the field's bytes


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _compact_string(value: str) -> bytes:
    raw = value.encode()
    return _uvarint(len(raw) + 1) + raw


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks += chunk
    return bytes(chunks)


def _round_trip(host: str, port: int, timeout: float, request: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        return _recv_exact(sock, size)


@dataclass(frozen=True)
class Partition:
    index: int
    error: int
    leader: int
    replicas: list[int]
    isr: list[int]


@dataclass(frozen=True)
class Metadata:
    brokers: list[str]  # "node_id@host:port"
    controller_id: int
    topics: dict[str, tuple[int, list[Partition]]]  # name -> (error code, partitions)


def metadata_full(host: str, port: int, timeout: float, topics: list[str] | None = None) -> Metadata:
    """One Metadata v4 round trip; topics=None asks for no topic details."""
    header = struct.pack(">hhih", METADATA_API_KEY, METADATA_VERSION, CORRELATION_ID, len(CLIENT_ID)) + CLIENT_ID
    body = struct.pack(">i", len(topics or []))
    for topic in topics or []:
        raw = topic.encode()
        body += struct.pack(">h", len(raw)) + raw
    body += struct.pack(">?", False)  # allow_auto_topic_creation
    reader = _Reader(_round_trip(host, port, timeout, header + body))
    correlation_id = reader.int32()
    if correlation_id != CORRELATION_ID:
        raise ValueError(f"unexpected correlation id {correlation_id}")
    reader.int32()  # throttle_time_ms
    brokers = []
    for _ in range(reader.int32()):
        node_id = reader.int32()
        broker_host = reader.string()
        broker_port = reader.int32()
        reader.string()  # rack
        brokers.append(f"{node_id}@{broker_host}:{broker_port}")
    reader.string()  # cluster_id
    controller_id = reader.int32()
    described: dict[str, tuple[int, list[Partition]]] = {}
    for _ in range(reader.int32()):
        topic_error = reader.int16()
        name = reader.string() or ""
        reader.int8()  # is_internal
        partitions = []
        for _ in range(reader.int32()):
            error = reader.int16()
            index = reader.int32()
            leader = reader.int32()
            replicas = reader.int32_array()
            isr = reader.int32_array()
            partitions.append(Partition(index, error, leader, replicas, isr))
        described[name] = (topic_error, sorted(partitions, key=lambda p: p.index))
    return Metadata(brokers, controller_id, described)


def metadata(host: str, port: int, timeout: float) -> tuple[list[str], int]:
    """(["node_id@host:port", ...], controller_id) from one Metadata v4 round trip."""
    result = metadata_full(host, port, timeout)
    return result.brokers, result.controller_id


@dataclass(frozen=True)
class Quorum:
    leader_id: int  # -1 when unknown
    leader_epoch: int
    high_watermark: int
    voters: dict[int, int]  # replica id -> log end offset (-1 when unknown)
    observers: dict[int, int]


def describe_quorum(host: str, port: int, timeout: float) -> Quorum:
    """One DescribeQuorum v0 round trip for the __cluster_metadata partition (request header v2)."""
    header = (
        struct.pack(">hhih", DESCRIBE_QUORUM_API_KEY, DESCRIBE_QUORUM_VERSION, CORRELATION_ID, len(CLIENT_ID))
        + CLIENT_ID
        + _uvarint(0)  # header tagged fields
    )
    body = (
        _uvarint(1 + 1)  # topics: 1
        + _compact_string(METADATA_TOPIC)
        + _uvarint(1 + 1)  # partitions: 1
        + struct.pack(">i", 0)
        + _uvarint(0)  # partition tagged fields
        + _uvarint(0)  # topic tagged fields
        + _uvarint(0)  # request tagged fields
    )
    reader = _Reader(_round_trip(host, port, timeout, header + body))
    correlation_id = reader.int32()
    if correlation_id != CORRELATION_ID:
        raise ValueError(f"unexpected correlation id {correlation_id}")
    reader.skip_tagged_fields()  # response header v1
    error = reader.int16()
    if error:
        raise ValueError(f"DescribeQuorum failed: {_error_name(error)}")
    for _ in range(reader.compact_length()):
        reader.compact_string()  # topic name
        for _ in range(reader.compact_length()):
            reader.int32()  # partition index
            error = reader.int16()
            if error:
                raise ValueError(f"DescribeQuorum failed for the metadata partition: {_error_name(error)}")
            leader_id, leader_epoch, high_watermark = reader.int32(), reader.int32(), reader.int64()
            replicas: list[dict[int, int]] = [{}, {}]
            for states in replicas:
                for _ in range(reader.compact_length()):
                    replica_id = reader.int32()
                    states[replica_id] = reader.int64()
                    reader.skip_tagged_fields()
            return Quorum(leader_id, leader_epoch, high_watermark, replicas[0], replicas[1])
    raise ValueError("DescribeQuorum answer holds no partition")


def _addresses(text: str) -> list[tuple[str, int]]:
    addresses = []
    for item in text.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise argparse.ArgumentTypeError(f"expected HOST:PORT[,HOST:PORT...], got {text!r}")
        addresses.append((host, int(port)))
    return addresses


def _first_answer(addresses: list[tuple[str, int]], ask: Callable[[str, int], T]) -> T:
    """ask(host, port) on each address in turn; the first answer, or the errors of all."""
    errors = []
    for host, port in addresses:
        try:
            return ask(host, port)
        except (OSError, ValueError, struct.error, IndexError) as exc:
            errors.append(f"{host}:{port}: {type(exc).__name__}: {exc}")
    raise ValueError("; ".join(errors))


def _ids(values: list[int]) -> str:
    return ",".join(map(str, values))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kafka_probe.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("bootstrap", type=_addresses, help="HOST:PORT[,HOST:PORT...]")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--min-brokers", type=int, default=1, metavar="N", help="ready when N brokers are listed")
    mode.add_argument("--quorum", action="store_true", help="describe the KRaft controller quorum")
    mode.add_argument("--topic", metavar="NAME", help="describe a topic's partitions")
    parser.add_argument("--partition", type=int, metavar="N", help="with --topic: only this partition")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")
    args = parser.parse_args(argv[1:])
    if args.partition is not None and args.topic is None:
        parser.error("--partition needs --topic")
    try:
        if args.quorum:
            quorum = _first_answer(args.bootstrap, lambda h, p: describe_quorum(h, p, args.timeout))
            voters = ",".join(f"{k}:{v}" for k, v in sorted(quorum.voters.items()))
            observers = ",".join(f"{k}:{v}" for k, v in sorted(quorum.observers.items()))
            print(
                f"leader={quorum.leader_id} epoch={quorum.leader_epoch} high_watermark={quorum.high_watermark}"
                f" voters={voters} observers={observers}"
            )
            if quorum.leader_id < 0:
                print("kafka probe: the controller quorum has no leader", file=sys.stderr)
                return 1
            return 0
        if args.topic is not None:
            result = _first_answer(args.bootstrap, lambda h, p: metadata_full(h, p, args.timeout, [args.topic]))
            error, partitions = result.topics.get(args.topic, (3, []))
            if error:
                print(f"kafka probe: topic {args.topic}: {_error_name(error)}", file=sys.stderr)
                return 1
            if args.partition is not None:
                partitions = [p for p in partitions if p.index == args.partition]
                if not partitions:
                    print(f"kafka probe: topic {args.topic} has no partition {args.partition}", file=sys.stderr)
                    return 1
            for p in partitions:
                status = f" error={_error_name(p.error)}" if p.error else ""
                print(f"partition={p.index} leader={p.leader} replicas={_ids(p.replicas)} isr={_ids(p.isr)}{status}")
            return 0
        result = _first_answer(args.bootstrap, lambda h, p: metadata_full(h, p, args.timeout))
    except ValueError as exc:
        print(f"kafka probe: {exc}", file=sys.stderr)
        return 1
    if len(result.brokers) < args.min_brokers:
        listed = ",".join(result.brokers) or "none"
        print(
            f"kafka probe: metadata lists {len(result.brokers)} live broker(s) ({listed}), waiting for"
            f" {args.min_brokers}",
            file=sys.stderr,
        )
        return 1
    print(f"brokers={','.join(result.brokers)} controller={result.controller_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
