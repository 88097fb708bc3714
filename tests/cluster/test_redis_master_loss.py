"""A Redis Cluster master SIGKILLed while the guard streams: the bound a sender's check relies on, and the view's
recovery from a failover it meets while it writes.

Redis replicates asynchronously: a master that dies takes the writes its replica has not received with it, and the
promoted replica answers without them. The view therefore acknowledges what it wrote (commits its consumer group's
offsets) only once every master's replica confirms it holds it (``WAIT`` after a write on every master,
``--redis-wait-replicas``, 1 on a cluster).

``test_redis_master_sigkilled_an_acknowledged_block_is_never_answered_allowed`` proves that bound. It freezes
(SIGSTOP) the replica of one master after most of the stream, streams the rest (the view writes it all to Redis;
the frozen replica confirms nothing, so the view must hold its acknowledgement back: that is what tells the WAIT
barrier from none), freezes the worker (so that it cannot repair anything yet), SIGKILLs the master, thaws the
replica and waits for its promotion. Then every block whose latest record the view had acknowledged must be
answered "blocked" by the promoted cluster. (Writes made after the freeze may survive anyway: the kernel's socket
buffers hand them to the thawed replica; the test prints how many were lost.) Thawed, the worker notices the
failover and reconciles: Redis ends equal to the replay of the stream.

``test_redis_master_sigkilled_mid_stream_the_view_reconciles_exactly_once`` meets the failover live: the paced
producer streams and the worker runs (nothing frozen) when the master serving the most of the stream's customers is
SIGKILLed. Its replica is promoted while the view writes and write-through runs; the stream goes on without the
killed node for a while (the promoted master has no replica then, so the view keeps writing and acknowledges
nothing), the node is started again (it rejoins as the promoted one's replica) and the view acknowledges again.
Right after the promotion the acknowledged blocks are checked as above (the view may have reconciled already, so
there it is a check, not the proof); at the end every output equals the replay exactly once and Redis holds the
replay's blocks in force and preference views.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from redis.crc import key_slot

from streams import redis_keys
from streams.redis_view import watermark_key
from streams.sender import PreSendCheck
from tests.cluster.cluster_profile import CLUSTER_IN_USE, HOW_TO_RUN, KafkaCluster, PacedProducer, worker_redis_url
from tests.cluster.test_broker_faults import _assert_input_is_the_stream, _committed, _start_guard
from tests.e2e.harness import REPO, GuardDeployment
from tests.e2e.parity import Messages, assert_exact_parity, make_messages

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


Records = dict[int, list[tuple[int, bytes, bytes | None]]]  # partition -> (offset, key, value), in offset order


def _check_acknowledged_blocks(
    url: str, prefix: str, records: Records, acknowledged: dict[int, int]
) -> tuple[list[str], list[str], list[str]]:
    """Ask a sender's check about every key whose latest record in ``records`` is a block in force: (those the view
    had acknowledged (offset below its group's committed offset), the acknowledged ones answered "allowed", the
    later ones answered "allowed")."""
    now_ms = int(time.time() * 1000)
    latest: dict[bytes, tuple[int, int, bytes | None]] = {}
    for partition, found in records.items():
        for offset, key, value in found:
            latest[key] = (partition, offset, value)
    client = redis_keys.sync_client(url, socket_timeout=5)
    check = PreSendCheck(client, prefix=prefix)
    checked: list[str] = []
    wrong: list[str] = []
    later: list[str] = []
    try:
        for key, (partition, offset, value) in latest.items():
            if value is None:
                continue
            decision = orjson.loads(value)
            if decision["action"] != "block" or (decision["until_ms"] is not None and decision["until_ms"] < now_ms):
                continue
            channel, customer = key.decode().split(":", 1)
            verdict = check.is_allowed(customer, channel, now_ms)
            if offset < acknowledged.get(partition, 0):
                checked.append(key.decode())
                if verdict.allowed:
                    wrong.append(key.decode())
            elif verdict.allowed:
                # not acknowledged: lost with the master, or not written yet, until the view reconciles
                later.append(key.decode())
    finally:
        client.close()
    return checked, wrong, later


def _acknowledged(bootstrap: str, deployment: GuardDeployment) -> dict[int, int]:
    """Decisions partition -> the offset the Redis view's group has committed: what the view has acknowledged."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        group = f"{deployment.name}.redis-view"
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    decisions = deployment.topics["decisions"]
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == decisions and meta.offset >= 0}


def _watermarks(url: str, deployment: GuardDeployment) -> dict[int, int]:
    """Decisions partition -> the view's watermark there: the offset up to which it has written (acknowledged or
    not; -1 for nothing)."""
    client = redis_keys.sync_client(url, socket_timeout=5)
    try:
        decisions = deployment.topics["decisions"]
        return {
            p: int(client.get(watermark_key(deployment.redis_prefix, decisions, p)) or -1)
            for p in range(deployment.partitions)
        }
    finally:
        client.close()


def _written(url: str, deployment: GuardDeployment) -> int:
    """How many decision offsets the view has written, over all partitions."""
    return sum(mark + 1 for mark in _watermarks(url, deployment).values())


def _role(port: int) -> tuple[str, int | None]:
    """(role, its master's port for a replica) of a cluster Redis node."""
    info = _node(port).info("replication")
    return str(info["role"]), (int(info["master_port"]) if "master_port" in info else None)


def _wait_promoted(replica: int, timeout_s: float = 60.0) -> None:
    """Until ``replica`` is a master and sees the cluster ``ok`` (the killed master's slots served again)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(redis.RedisError):
            if _role(replica)[0] == "master" and _node(replica).cluster("INFO")["cluster_state"] == "ok":
                return
        assert time.monotonic() < deadline, f"the replica {replica} was not promoted within {timeout_s}s"
        time.sleep(0.2)


def _busiest_master(url: str, prefix: str, messages: Messages) -> tuple[int, set[str], int]:
    """(port, its customers, the number of all customers) of the master serving the slots of the most customers of
    the stream."""
    customers = {key.decode() for key, _ in messages if key is not None}
    client = redis_keys.sync_client(url, socket_timeout=5)
    try:
        slot_map = client.nodes_manager.slots_cache  # type: ignore[union-attr]
        served: dict[int, set[str]] = {}
        for customer in customers:
            port = int(slot_map[key_slot(redis_keys.position_key(prefix, customer).encode())][0].port)
            served.setdefault(port, set()).add(customer)
    finally:
        client.close()
    port, theirs = max(served.items(), key=lambda item: len(item[1]))
    return port, theirs, len(customers)


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
        checked_keys, wrong, lost = _check_acknowledged_blocks(url, deployment.redis_prefix, records, acknowledged)
        checked, answered_allowed = len(checked_keys), len(wrong)
        print(
            f"  {checked} acknowledged blocks checked on the promoted cluster: {answered_allowed} answered allowed; "
            f"{len(lost)} later blocks (not acknowledged) lost with the master until the view reconciles"
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


LIVE_MESSAGES = 10_000
LIVE_CUSTOMERS = 1_200


def _latest_offsets(records: Records) -> dict[str, tuple[int, int]]:
    """Key -> (partition, offset) of its latest record."""
    return {key.decode(): (partition, offset) for partition, found in records.items() for offset, key, _ in found}


def test_redis_master_sigkilled_mid_stream_the_view_reconciles_exactly_once(
    cluster_deployment_factory: Callable[..., GuardDeployment],
    kafka_cluster: KafkaCluster,
    redis_restored: list[int],
) -> None:
    started = time.monotonic()
    url = worker_redis_url()
    deployment = cluster_deployment_factory()
    _start_guard(deployment, kafka_cluster)
    decisions = deployment.topics["decisions"]
    messages = make_messages(LIVE_MESSAGES, LIVE_CUSTOMERS, seed=73)
    # The blocks still in force at the end come mostly from the stream's later part (its event time ends four days
    # before now): its first 70% is sent at once, so that the view has acknowledged enough of them at the kill; the
    # rest is paced (at most ~170 messages/s) and released in parts, so that input flows through the kill, the
    # promotion, the time the killed node is down and its restart, however long each takes on a loaded machine.
    bulk = len(messages) * 7 // 10
    deployment.produce(messages[:bulk])
    rest = messages[bulk:]
    producer = PacedProducer(deployment, rest, chunk=100, pause_s=0.5, limit=len(rest) // 4).start()
    deployment.wait_until_committed(bulk + len(rest) // 8, timeout_s=90)
    deadline = time.monotonic() + 60
    while not sum(_acknowledged(deployment.bootstrap, deployment).values()):  # its WAIT barrier passes
        assert time.monotonic() < deadline, "the view acknowledged nothing in 60 s"
        time.sleep(0.25)

    master, theirs, of_all = _busiest_master(url, deployment.redis_prefix, messages)
    replica = _pairs(url)[master]
    committed_at_kill, sent_at_kill = _committed(deployment), bulk + producer.sent
    log_at_kill = deployment.log_size("w1")
    written_at_kill = _watermarks(url, deployment)
    producer.release(len(rest) // 2)
    kafka_cluster.stack("kill-redis", str(master), timeout_s=60)
    killed_at = time.monotonic()
    print(
        f"\nSIGKILL Redis master {master} (serving the slots of {len(theirs)} of the stream's {of_all} customers; "
        f"replica {replica}) at +{killed_at - started:.1f}s: {sent_at_kill}/{len(messages)} events sent, "
        f"{committed_at_kill} input offsets committed; the worker runs, the producer streams on"
    )
    _wait_promoted(replica)
    promoted_at = time.monotonic()
    print(f"  replica {replica} promoted to master {promoted_at - killed_at:.1f}s after the kill")

    # The bound, met live: every block whose latest record the view had acknowledged is answered "blocked". The
    # view's group cannot have committed anything since the kill (its barrier fails on the dead master, then finds
    # the promoted one without a replica), so its offsets now are what it had acknowledged before it.
    acknowledged = _acknowledged(deployment.bootstrap, deployment)
    records = _committed_records(deployment.bootstrap, decisions, deployment.partitions)
    reconciled = f"reconciled {decisions} " in deployment.log_since("w1", log_at_kill)  # before the check?
    checked, wrong, later = _check_acknowledged_blocks(url, deployment.redis_prefix, records, acknowledged)
    if wrong:  # a key decided again meanwhile (allowed, erased) may be answered "allowed" rightly: not counted
        before = _latest_offsets(records)
        after = _latest_offsets(_committed_records(deployment.bootstrap, decisions, deployment.partitions))
        wrong = [key for key in wrong if after.get(key) == before[key]]
    on_master = sum(key.split(":", 1)[1] in theirs for key in checked)
    # of the later blocks answered "allowed", those the view had written before the kill were lost with the master;
    # the others it had not written yet (decided in the last moments before the kill, or since)
    latest = _latest_offsets(records)
    lost = [key for key in later if latest[key][1] <= written_at_kill[latest[key][0]]]
    print(
        f"  {len(checked)} blocks in force acknowledged before the kill ({on_master} on {master}'s slots; "
        f"{sum(acknowledged.values())} decision offsets acknowledged) checked {time.monotonic() - killed_at:.1f}s "
        f"after the kill, the view {'having' if reconciled else 'not having'} reconciled yet: {len(wrong)} answered "
        f"allowed. Later blocks answered allowed: {len(lost)} written before the kill (lost with the master), "
        f"{len(later) - len(lost)} not written yet"
    )
    assert not wrong, f"acknowledged blocks answered allowed after the failover: {wrong[:5]}"
    assert len(checked) > 20 and on_master > 0, "too few acknowledged blocks to check"

    # The stream goes on without the killed node: the promoted master has no replica, so the view keeps writing
    # (its watermarks move) and acknowledges nothing (its group's offsets stay).
    committed_down, written_down = _committed(deployment), _written(url, deployment)
    time.sleep(max(0.0, 8 - (time.monotonic() - promoted_at)))
    acknowledged_down = _acknowledged(deployment.bootstrap, deployment)
    committed_more = _committed(deployment) - committed_down
    written_more = _written(url, deployment) - written_down
    print(
        f"  {time.monotonic() - promoted_at:.1f}s after the promotion ({bulk + producer.sent} sent): "
        f"{committed_more} more input offsets committed; the view wrote {written_more} more decision offsets and "
        f"acknowledged {sum(acknowledged_down.values()) - sum(acknowledged.values())} more"
    )
    assert committed_more > 0, "the guard should go on deciding while a Redis master is lost"
    assert written_more > 0, "the view should go on writing to the promoted master"
    assert acknowledged_down == acknowledged, "the view acknowledged writes no replica holds"

    restart_at = time.monotonic()
    producer.release(len(rest))
    kafka_cluster.stack("start-redis", str(master), timeout_s=90)
    role, follows = _role(master)
    print(
        f"  restarted {master} at +{restart_at - started:.1f}s ({bulk + producer.sent} sent): back in "
        f"{time.monotonic() - restart_at:.1f}s as {role} of {follows}"
    )
    assert (role, follows) == ("slave", replica), "the killed master should rejoin as its successor's replica"
    deadline = time.monotonic() + 60
    while sum(_acknowledged(deployment.bootstrap, deployment).values()) <= sum(acknowledged.values()):
        assert time.monotonic() < deadline, "the view acknowledged nothing within 60 s of the replica's return"
        time.sleep(0.25)
    print(f"  the view acknowledged again {time.monotonic() - restart_at:.1f}s after the restart")

    _assert_input_is_the_stream(deployment, bulk + producer.join(), len(messages))
    print(f"  stream fully produced at +{time.monotonic() - started:.1f}s")
    expected = assert_exact_parity(deployment, messages, min_blocks=20, wall_clock=False, settle_timeout_s=180)
    log = deployment.log_since("w1", log_at_kill)
    failovers = log.count(f"redis restarted or failed over (masters or run ids changed): reconciling {decisions}")
    reconciles = log.count(f"reconciled {decisions} ")
    print(
        f"  verified: {sum(expected.decisions.values())} decisions, {sum(expected.violations.values())} violations, "
        f"{sum(expected.rejections.values())} dead letters each exactly once (read committed); Redis holds the "
        f"replay's {len(expected.blocks)} blocks in force and {len(expected.prefs)} preference views; the view "
        f"reconciled the decisions {reconciles} time(s) since the kill ({failovers} on a topology change); "
        f"{time.monotonic() - started:.0f}s in all"
    )
    assert reconciles > 0, "the view should have reconciled after the failover"
    assert deployment.workers["w1"].poll() is None, "the worker must ride out a Redis failover"
