"""Readiness probe for deploy/local/stack.sh: one real Kafka Metadata request, standard library only.

Exit 0 only when the broker at HOST:PORT answers a Metadata request listing at least one broker.
An open TCP port alone is not enough: a KRaft broker listens before it has caught up with the
metadata log and been unfenced.

Standard library only, so it runs before `make venv` and with any python3. Metadata v4 is served by
every broker since Kafka 1.0 up to 4.x and predates the "flexible" (tagged field) encoding of v9+,
so its bytes are easy to write by hand.
"""

from __future__ import annotations

import socket
import struct
import sys

METADATA_API_KEY = 3
METADATA_VERSION = 4
CORRELATION_ID = 4242
CLIENT_ID = b"fatigue-stack-probe"


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks += chunk
    return bytes(chunks)


def _string(data: bytes, pos: int) -> tuple[str | None, int]:
    (length,) = struct.unpack_from(">h", data, pos)
    pos += 2
    if length < 0:
        return None, pos
    return data[pos : pos + length].decode(), pos + length


def metadata(host: str, port: int, timeout: float) -> tuple[list[str], int]:
    """(["node_id@host:port", ...], controller_id) from one Metadata v4 round trip."""
    header = struct.pack(">hhih", METADATA_API_KEY, METADATA_VERSION, CORRELATION_ID, len(CLIENT_ID)) + CLIENT_ID
    # topics: empty array (no topic details wanted), allow_auto_topic_creation: false
    body = struct.pack(">i?", 0, False)
    request = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        data = _recv_exact(sock, size)
    correlation_id, _throttle_ms, broker_count = struct.unpack_from(">iii", data, 0)
    if correlation_id != CORRELATION_ID:
        raise ValueError(f"unexpected correlation id {correlation_id}")
    pos = 12
    brokers = []
    for _ in range(broker_count):
        (node_id,) = struct.unpack_from(">i", data, pos)
        broker_host, pos = _string(data, pos + 4)
        (broker_port,) = struct.unpack_from(">i", data, pos)
        _rack, pos = _string(data, pos + 4)
        brokers.append(f"{node_id}@{broker_host}:{broker_port}")
    _cluster_id, pos = _string(data, pos)
    (controller_id,) = struct.unpack_from(">i", data, pos)
    return brokers, controller_id


def main(argv: list[str]) -> int:
    if len(argv) != 2 or ":" not in argv[1]:
        print("usage: kafka_probe.py HOST:PORT", file=sys.stderr)
        return 2
    host, _, port = argv[1].rpartition(":")
    try:
        brokers, controller_id = metadata(host, int(port), timeout=5.0)
    except (OSError, ValueError, struct.error) as exc:
        print(f"kafka probe: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not brokers:
        print("kafka probe: metadata lists no live broker yet", file=sys.stderr)
        return 1
    print(f"brokers={','.join(brokers)} controller={controller_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
