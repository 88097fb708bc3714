"""A Redis Cluster master SIGKILLed while the guard streams, its replica behind: the bound a sender's check relies on,
and the view's recovery.

Redis replicates asynchronously: a master that dies takes the writes its replica has not received with it, and the
promoted replica answers without them. The view therefore acknowledges what it wrote (commits its consumer group's
offsets) only once every master's replica confirms it holds it (``WAIT`` after a write on every master,
``--redis-wait-replicas``, 1 on a cluster). The test freezes (SIGSTOP) the replica of one master after most of the
stream, streams the rest (the view writes it all to Redis; the frozen replica confirms nothing, so the view must
hold its acknowledgement back: that is what tells the WAIT barrier from none), freezes the worker (so that it cannot
repair anything yet), SIGKILLs the master, thaws the replica and waits for its promotion. Then every block whose
latest record the view had acknowledged must be answered "blocked" by the promoted cluster. (Writes made after the
freeze may survive anyway: the kernel's socket buffers hand them to the thawed replica; the test prints how many
were lost.) Thawed, the worker notices the failover and reconciles: Redis ends equal to the replay of the stream.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from streams import redis_keys
from streams.redis_view import watermark_key
from streams.sender import PreSendCheck
from tests.cluster.cluster_profile import CLUSTER_IN_USE, HOW_TO_RUN, KafkaCluster
from tests.cluster.test_broker_faults import _start_guard
from tests.e2e.harness import REPO, GuardDeployment
from tests.e2e.parity import assert_exact_parity, make_messages

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.integration,
    pytest.mark.e2e,
    pytest.mark.skipif(not CLUSTER_IN_USE, reason=f"the cluster profile is not in use: {HOW_TO_RUN}"),
]

MESSAGES = 12_000
CUSTOMERS = 1_500
STACK = REPO / "deploy" / "local" / "stack.sh"


def _node(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)


def _pairs(url: str) -> dict[int, int]:
    """Master port -> its replica's port, from CLUSTER NODES (as redis-py parses it)."""
    port = redis_keys.parse_redis_url(url).startup_nodes[0][1]
    nodes = _node(port).cluster("NODES")
    ports = {info["node_id"]: int(address.rsplit(":", 1)[1]) for address, info in nodes.items()}
    return {
        ports[info["master_id"]]: int(address.rsplit(":", 1)[1])
        for address, info in nodes.items()
        if "slave" in info["flags"] and "fail" not in info["flags"] and info["master_id"] in ports
    }


def _redis_pid(port: int) -> int:
    cache = Path(os.environ.get("FATIGUE_CACHE_DIR") or REPO / ".cache")  # where stack.sh keeps its pid files
    return int((cache / "cluster" / f"redis-{port}" / "redis.pid").read_text().split()[0])


def _committed_records(bootstrap: str, topic: str, partitions: int) -> dict[int, list[tuple[int, bytes, bytes | None]]]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False, group_id=None
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        found: dict[int, list[tuple[int, bytes, bytes | None]]] = {p: [] for p in range(partitions)}
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, "could not read the decisions topic to its end"
            for tp, messages in consumer.poll(timeout_ms=500).items():
                found[tp.partition].extend((m.offset, m.key, m.value) for m in messages if m.key is not None)
        return found
    finally:
        consumer.close()


def _start_redis(port: int) -> None:
    """Start a cluster Redis node again (a no-op when it runs); returns once it is back in the cluster."""
    subprocess.run([str(STACK), "start-redis", str(port), "--cluster"], capture_output=True, timeout=90, check=False)


@pytest.fixture
def redis_restored() -> Iterator[list[int]]:
    """Whatever happens in the test, every Redis node runs and no process it froze stays frozen afterwards."""
    frozen: list[int] = []
    yield frozen
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    for port in range(17001, 17007):
        _start_redis(port)


def test_redis_master_sigkilled_an_acknowledged_block_is_never_answered_allowed(
    cluster_bootstrap: str, kafka_cluster: KafkaCluster, tmp_path: Path, redis_restored: list[int]
) -> None:
    started = time.monotonic()
    url = os.environ["FATIGUE_REDIS_URL"]
    deployment = GuardDeployment(cluster_bootstrap, url, tmp_path / "d0")
    deployment.workdir.mkdir(parents=True)
    frozen = redis_restored
    try:
        _start_guard(deployment, kafka_cluster)
        messages = make_messages(MESSAGES, CUSTOMERS, seed=71)
        # most of the stream before the freeze: blocks made then and still in force are the acknowledged ones
        half = len(messages) * 4 // 5
        deployment.produce(messages[:half])
        deployment.wait_until_settled(timeout_s=180, stable_s=4)

        pairs = _pairs(url)
        master, replica = sorted(pairs.items())[0]
        replica_pid, master_pid = _redis_pid(replica), _redis_pid(master)
        os.kill(replica_pid, signal.SIGSTOP)
        frozen.append(replica_pid)
        print(f"\nfroze (SIGSTOP) Redis replica {replica} of master {master} after {half} events")
        deployment.produce(messages[half:])

        # the view writes everything (the watermarks reach the topics' ends) but cannot get it acknowledged
        decisions = deployment.topics["decisions"]
        client = redis_keys.sync_client(url, socket_timeout=5)
        deadline = time.monotonic() + 120
        while True:
            ends = {decisions: deployment.end_offsets_by_partition("decisions")}
            held = {
                p: int(client.get(watermark_key(deployment.redis_prefix, decisions, p)) or -1)
                for p in range(deployment.partitions)
            }
            if all(held[p] >= end - 1 for p, end in ends[decisions].items() if end > 0) and deployment.end_offsets(
                "events"
            ) <= sum(deployment.committed_offsets("events").values()):
                break
            assert time.monotonic() < deadline, f"the view did not write the stream: {held} vs {ends}"
            time.sleep(0.5)
        time.sleep(2.5)  # two of the view's commit attempts, both held back
        admin = KafkaAdminClient(bootstrap_servers=cluster_bootstrap)
        try:
            group = f"{deployment.name}.redis-view"
            offsets = admin.list_group_offsets({group: None}).get(group, {})
        finally:
            admin.close()
        acknowledged = {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == decisions}
        total_end = sum(ends[decisions].values())
        print(
            f"  the view wrote the decisions topic up to its end ({total_end} offsets) and acknowledged "
            f"{sum(acknowledged.values())} of them"
        )
        assert sum(acknowledged.values()) < total_end, "the view acknowledged writes its replica cannot have"

        worker = deployment.workers["w1"]
        worker.send_signal(signal.SIGSTOP)
        frozen.append(worker.pid)
        os.kill(master_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        os.kill(replica_pid, signal.SIGCONT)
        frozen.remove(replica_pid)
        print(f"  froze the worker, SIGKILLed master {master}, thawed replica {replica}")
        deadline = time.monotonic() + 60
        while True:
            try:
                node = _node(replica)
                role = node.info("replication")["role"]
                state = node.cluster("INFO")["cluster_state"]
                if role == "master" and state == "ok":
                    break
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, "the replica was not promoted within 60 s"
            time.sleep(0.2)
        print(f"  replica {replica} promoted {time.monotonic() - killed_at:.1f}s after the kill")

        # the bound: every block whose latest record the view had acknowledged is answered "blocked"
        records = _committed_records(cluster_bootstrap, decisions, deployment.partitions)
        now_ms = int(time.time() * 1000)
        latest: dict[bytes, tuple[int, int, bytes | None]] = {}
        for partition, found in records.items():
            for offset, key, value in found:
                latest[key] = (partition, offset, value)
        check = PreSendCheck(redis_keys.sync_client(url, socket_timeout=5), prefix=deployment.redis_prefix)
        checked = answered_allowed = lost = 0
        wrong: list[str] = []
        for key, (partition, offset, value) in latest.items():
            if value is None:
                continue
            decision = orjson.loads(value)
            if decision["action"] != "block" or (decision["until_ms"] is not None and decision["until_ms"] < now_ms):
                continue
            channel, customer = key.decode().split(":", 1)
            verdict = check.is_allowed(customer, channel, now_ms)
            if offset < acknowledged.get(partition, 0):
                checked += 1
                if verdict.allowed:
                    answered_allowed += 1
                    wrong.append(key.decode())
            elif verdict.allowed:
                lost += 1  # written after the freeze, lost with the master: the view's reconcile brings it back
        print(
            f"  {checked} acknowledged blocks checked on the promoted cluster: {answered_allowed} answered allowed; "
            f"{lost} later blocks (not acknowledged) lost with the master until the view reconciles"
        )
        assert not wrong, f"acknowledged blocks answered allowed: {wrong[:5]}"
        assert checked > 50

        worker.send_signal(signal.SIGCONT)
        frozen.remove(worker.pid)
        _start_redis(master)
        print(f"  thawed the worker; restarted {master} (a replica now)")
        expected = assert_exact_parity(deployment, messages, min_blocks=20, wall_clock=False, settle_timeout_s=180)
        print(
            f"  verified: Redis holds the replay's {len(expected.blocks)} blocks in force and {len(expected.prefs)} "
            f"preference views again; {time.monotonic() - started:.0f}s in all"
        )
        assert deployment.workers["w1"].poll() is None, "the worker must ride out a Redis failover"
    finally:
        deployment.cleanup()
