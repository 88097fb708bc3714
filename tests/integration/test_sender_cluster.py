"""PreSendCheck on the hash-tagged key layout, on the single Redis and on the Redis Cluster of the cluster profile.

The same customers (blocked, capped long ago, with quiet hours now or not, odd ids) are written with the
streams.redis_keys functions to both; ``is_allowed`` and the bulk ``filter`` must give the expected verdict for
every id, the same on both. On the cluster the customers are spread over the three primaries, the fallback path
(per-slot MGETs, where the script cannot run) agrees, the CLI takes the cluster URL, and a bulk filter that meets a
failover (``CLUSTER FAILOVER`` on a replica: its primary's slots move, no process stops) answers no id wrongly.

The cluster tests (marker ``cluster``) are skipped unless the cluster profile's environment is exported
(`eval "$(deploy/local/stack.sh env --cluster)"`); they then also need the single-node stack, for the comparison.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import TryAgainError

from fatigue.events import CHANNELS
from streams.redis_keys import block_key, customer_tag, is_cluster_url, prefs_key
from streams.sender import PreSendCheck, Verdict

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "deploy" / "local" / "stack.sh"
HOW_TO_RUN = 'start it with `deploy/local/stack.sh up --cluster` and `eval "$(deploy/local/stack.sh env --cluster)"`'
ENV_URL = os.environ.get("FATIGUE_REDIS_URL", "")
CLUSTER_URL = ENV_URL if ENV_URL and is_cluster_url(ENV_URL) else None
DAY = 86_400_000
ODD_IDS = ["", "a}b", "{x}", "}", "{", "c:{d}", "é-ü-\u4e2d", "line\nbreak", "nul\x00byte", "tab\x1fsep", "x" * 300]
CUSTOMERS = [f"cust-{index:05d}" for index in range(3000)] + ODD_IDS


def _clock(minute: int) -> str:
    minute %= 1440
    return f"{minute // 60:02d}:{minute % 60:02d}"


class Audience:
    """Customers with, by index: an email block in force (% 4 == 0), an expired one the view has not removed yet
    (% 4 == 1), an sms block (% 5 == 0), email quiet hours around now (% 10 == 3) or far from now (% 10 == 7);
    the odd ids are all blocked on email."""

    def __init__(self, prefix: str, now: int) -> None:
        self.prefix = prefix
        self.now = now
        minute = (now // 60_000) % 1440
        self.quiet_now = {"start": _clock(minute - 120), "end": _clock(minute + 120)}
        self.quiet_later = {"start": _clock(minute + 300), "end": _clock(minute + 420)}

    def write(self, client: redis.Redis | RedisCluster) -> None:
        now = self.now
        pipe = client.pipeline(transaction=False)
        for index, customer in enumerate(CUSTOMERS):
            odd = customer in ODD_IDS
            if index % 4 == 0 or odd:
                block = {"action": "block", "reason": "cap", "until": None, "until_ms": now + DAY}
                pipe.set(block_key(self.prefix, "email", customer), orjson.dumps(block), pxat=now + DAY)
            elif index % 4 == 1:
                stale = {"action": "block", "reason": "cap", "until_ms": now - 1000}
                pipe.set(block_key(self.prefix, "email", customer), orjson.dumps(stale), px=DAY)
            if index % 5 == 0:
                block = {"action": "block", "reason": "sms_stop", "until": None}
                pipe.set(block_key(self.prefix, "sms", customer), orjson.dumps(block), px=DAY)
            if index % 10 in (3, 7):
                quiet = self.quiet_now if index % 10 == 3 else self.quiet_later
                view = {"customer_id": customer, "timezone": "UTC", "quiet_hours": {"email": quiet}}
                pipe.set(prefs_key(self.prefix, customer), orjson.dumps(view), px=DAY)
        pipe.execute()

    def expected(self, channel: str) -> dict[str, Verdict]:
        verdicts: dict[str, Verdict] = {}
        for index, customer in enumerate(CUSTOMERS):
            verdict = Verdict(True)
            if channel == "email" and (index % 4 == 0 or customer in ODD_IDS):
                verdict = Verdict(False, "cap", None)
            elif channel == "email" and index % 10 == 3:
                verdict = Verdict(False, "quiet_hours")
            elif channel == "sms" and index % 5 == 0:
                verdict = Verdict(False, "sms_stop", None)
            verdicts[customer] = verdict
        return verdicts


def _verdicts(check: PreSendCheck, channel: str, now: int, batch: int = 700) -> dict[str, Verdict]:
    bulk = list(check.filter(CUSTOMERS, channel, now, batch=batch))
    assert [customer for customer, _ in bulk] == CUSTOMERS  # every id, in order
    return dict(bulk)


def _clean(client: redis.Redis | RedisCluster, prefix: str) -> None:
    nodes: list[redis.Redis] = [client] if isinstance(client, redis.Redis) else []
    if isinstance(client, RedisCluster):
        nodes = [client.get_redis_connection(node) for node in client.get_primaries()]
    for node in nodes:
        try:
            keys = list(node.scan_iter(match=f"{prefix}:*", count=1000))
            pipe = node.pipeline(transaction=False)
            for key in keys:  # one key per command: a node's keys span many slots
                pipe.unlink(key)
            pipe.execute()
        except redis.RedisError:  # a node another test has stopped: its keys expire within a day
            pass


@pytest.fixture(scope="module")
def single_url() -> str:
    """The single-node stack's Redis: FATIGUE_REDIS_URL, or, when that is the cluster's, what `stack.sh env` gives."""
    url = ENV_URL
    if not url or is_cluster_url(url):
        env = {key: value for key, value in os.environ.items() if key != "FATIGUE_REDIS_URL"}
        printed = subprocess.run([str(STACK), "env"], capture_output=True, text=True, env=env, timeout=30).stdout
        url = next(
            (line.split("=", 1)[1].strip("'\"") for line in printed.split() if line.startswith("FATIGUE_REDIS_URL=")),
            "redis://127.0.0.1:16379/0",
        )
    try:
        with redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5) as client:
            client.ping()
    except redis.RedisError as error:
        pytest.fail(f"the single-node Redis at {url} does not answer ({error!r}): deploy/local/stack.sh up")
    return url


@pytest.fixture
def prefix() -> str:
    return f"test-sender-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def single(single_url: str, prefix: str) -> Iterator[PreSendCheck]:
    check = PreSendCheck.from_url(single_url, prefix=prefix, socket_timeout=10)
    yield check
    _clean(check.client, prefix)
    check.close()


@pytest.fixture
def cluster(prefix: str) -> Iterator[PreSendCheck]:
    assert CLUSTER_URL is not None
    try:
        check = PreSendCheck.from_url(CLUSTER_URL, prefix=prefix, socket_timeout=10, socket_connect_timeout=5)
    except Exception as error:
        pytest.fail(f"the Redis Cluster at {CLUSTER_URL} does not answer: {error!r}; {HOW_TO_RUN}", pytrace=False)
    yield check
    _clean(check.client, prefix)
    check.close()


def test_verdicts_on_the_single_redis(single: PreSendCheck, prefix: str) -> None:
    now = int(time.time() * 1000)
    audience = Audience(prefix, now)
    audience.write(single.client)
    for channel in CHANNELS:
        expected = audience.expected(channel)
        assert _verdicts(single, channel, now) == expected
        assert {customer: single.is_allowed(customer, channel, now) for customer in CUSTOMERS} == expected
    assert _verdicts(single, "email", now, batch=5000) == audience.expected("email")


def test_the_single_redis_path_survives_a_killed_connection(single_url: str, prefix: str) -> None:
    # the two MGETs are packed and read by the check itself: a connection the server dropped is reopened and the
    # batch asked again, as redis-py does for its own commands, and no reply is read as another batch's
    name = f"sender-test-{uuid.uuid4().hex[:8]}"
    with PreSendCheck.from_url(single_url, prefix=prefix, client_name=name) as check:
        now = int(time.time() * 1000)
        audience = Audience(prefix, now)
        try:
            audience.write(check.client)
            expected = audience.expected("email")
            assert _verdicts(check, "email", now) == expected
            with redis.Redis.from_url(single_url) as admin:
                ours = [client["id"] for client in admin.client_list() if client.get("name") == name]
                assert ours
                for client_id in ours:
                    admin.client_kill_filter(_id=client_id)
            assert _verdicts(check, "email", now) == expected
        finally:
            _clean(check.client, prefix)


@pytest.mark.cluster
@pytest.mark.skipif(CLUSTER_URL is None, reason=f"the cluster profile is not in use: {HOW_TO_RUN}")
def test_verdicts_are_the_same_on_the_single_redis_and_the_cluster(
    single: PreSendCheck, cluster: PreSendCheck, prefix: str
) -> None:
    now = int(time.time() * 1000)
    audience = Audience(prefix, now)
    audience.write(single.client)
    audience.write(cluster.client)
    client = cluster.client
    assert isinstance(client, RedisCluster)
    blocked = [customer for index, customer in enumerate(CUSTOMERS) if index % 4 == 0]
    quiet = [customer for index, customer in enumerate(CUSTOMERS) if index % 10 == 3]
    for group in (blocked, quiet, ODD_IDS):  # each kind of customer on every primary
        assert len({client.get_node_from_key(customer_tag(customer)).name for customer in group}) == 3
    for channel in CHANNELS:
        expected = audience.expected(channel)
        on_cluster = _verdicts(cluster, channel, now)
        assert on_cluster == expected
        assert on_cluster == _verdicts(single, channel, now)
        assert {customer: cluster.is_allowed(customer, channel, now) for customer in CUSTOMERS} == expected
    assert _verdicts(cluster, "email", now, batch=5000) == audience.expected("email")
    # each way the script receives a batch's ids: joined by "\n", by "\x00", by "\x1f", or one per argument
    email = audience.expected("email")
    for group in (
        ["cust-00000", "cust-00001", ""],
        ["line\nbreak", "cust-00000", "cust-00003"],
        ["line\nbreak", "nul\x00byte", "cust-00004"],
        ["line\nbreak", "nul\x00byte", "tab\x1fsep", "cust-00003"],
    ):
        assert dict(cluster.filter(group, "email", now)) == {customer: email[customer] for customer in group}
    assert cluster.script_unusable is None
    # where the script cannot run, the cluster client's own per-slot MGETs give the same verdicts
    cluster.script_unusable = "test: the MGET path"
    assert _verdicts(cluster, "email", now) == audience.expected("email")


@pytest.mark.cluster
@pytest.mark.skipif(CLUSTER_URL is None, reason=f"the cluster profile is not in use: {HOW_TO_RUN}")
def test_the_cli_takes_the_cluster_url(cluster: PreSendCheck, prefix: str, tmp_path: Path) -> None:
    assert CLUSTER_URL is not None
    now = int(time.time() * 1000)
    audience = Audience(prefix, now)
    audience.write(cluster.client)
    env = {**os.environ, "FATIGUE_REDIS_URL": CLUSTER_URL, "FATIGUE_REDIS_PREFIX": prefix}
    checked = subprocess.run(
        [sys.executable, "-m", "fatigue.cli", "check", "cust-00000"], capture_output=True, env=env, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    report = orjson.loads(checked.stdout)
    assert report["channels"]["email"]["status"] == "blocked"
    assert report["channels"]["sms"]["decision"]["reason"] == "sms_stop"
    assert report["channels"]["call"] == {"status": "allowed"}
    plain = [customer for customer in CUSTOMERS if customer not in ODD_IDS]
    path = tmp_path / "audience.txt"
    path.write_text("".join(f"{customer}\n" for customer in plain))
    filtered = subprocess.run(
        [sys.executable, "-m", "fatigue.cli", "filter", "--channel", "email", str(path)],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert filtered.returncode == 0, filtered.stderr
    expected = audience.expected("email")
    assert filtered.stdout.decode().splitlines() == [customer for customer in plain if expected[customer].allowed]


def _node_id_and_role(port: int) -> tuple[str, str]:
    with redis.Redis(port=port, socket_timeout=5) as node:
        return node.execute_command("CLUSTER", "MYID").decode(), node.execute_command("ROLE")[0].decode()


def _swapped(replica_port: int, primary_port: int) -> bool:
    """The replica is a primary, the primary its replica in sync, and both see the cluster ok."""
    if (_node_id_and_role(replica_port)[1], _node_id_and_role(primary_port)[1]) != ("master", "slave"):
        return False
    with redis.Redis(port=primary_port, socket_timeout=5) as old:
        if old.info("replication").get("master_link_status") != "up":
            return False
    for port in (replica_port, primary_port):
        with redis.Redis(port=port, socket_timeout=5) as node:
            if node.cluster("INFO")["cluster_state"] != "ok":
                return False
    return True


def _knows_its_replica(primary_port: int, replica_port: int) -> bool:
    """The primary's own view lists the replica as its replica (a manual failover needs the primary's consent)."""
    replica_id = _node_id_and_role(replica_port)[0]
    with redis.Redis(port=primary_port, socket_timeout=5, decode_responses=True) as primary:
        lines = primary.execute_command("CLUSTER", "REPLICAS", primary.execute_command("CLUSTER", "MYID"))
    return any(line.split()[0] == replica_id for line in lines)


def _failover(replica_port: int, primary_port: int, timeout_s: float = 90.0) -> None:
    """CLUSTER FAILOVER on the replica (coordinated: the primary pauses writes until the replica has caught up);
    returns once the two have swapped roles. Right after a failover the new primary may not know its new replica
    yet, and a manual failover then times out (5 s): it is asked again until it succeeds."""
    deadline = time.monotonic() + timeout_s
    while not _knows_its_replica(primary_port, replica_port):
        assert time.monotonic() < deadline, f"{primary_port} does not list {replica_port} as its replica"
        time.sleep(0.2)
    while True:
        with redis.Redis(port=replica_port, socket_timeout=10) as replica:
            replica.execute_command("CLUSTER", "FAILOVER")
        asked = time.monotonic()
        while time.monotonic() - asked < 10:
            if _swapped(replica_port, primary_port):
                return
            time.sleep(0.2)
        assert time.monotonic() < deadline, f"failover of {primary_port} to {replica_port} not done in {timeout_s}s"


@pytest.mark.cluster
@pytest.mark.skipif(CLUSTER_URL is None, reason=f"the cluster profile is not in use: {HOW_TO_RUN}")
def test_a_bulk_filter_meeting_a_failover_answers_no_id_wrongly(cluster: PreSendCheck, prefix: str) -> None:
    assert CLUSTER_URL is not None
    client = cluster.client
    assert isinstance(client, RedisCluster)
    now = int(time.time() * 1000)
    audience = Audience(prefix, now)
    audience.write(client)
    expected = audience.expected("email")
    assert _verdicts(cluster, "email", now) == expected  # the check's slot map is now the current one

    # a primary with a replica in sync (another test may have a node down), and a customer it serves
    nodes = client.cluster_nodes()
    pairs = [
        (int(primary.split("@")[0].rsplit(":", 1)[1]), int(address.split("@")[0].rsplit(":", 1)[1]))
        for address, node in nodes.items()
        if "slave" in node["flags"] and node["connected"] and "fail" not in node["flags"]
        for primary, owner in nodes.items()
        if owner["node_id"] == node["master_id"] and "master" in owner["flags"] and owner["connected"]
    ]
    if not pairs:
        pytest.fail(f"no primary of the cluster has a connected replica: {nodes}")
    primary_port, replica_port = pairs[0]
    probe = next(
        customer_tag(customer)
        for customer in CUSTOMERS
        if client.get_node_from_key(customer_tag(customer)).port == primary_port
    )
    slot = key_slot(probe.encode())

    # bulk filters all along, on a check of their own, while the slots move and move back
    mismatches: list[tuple[str, Verdict, Verdict]] = []
    passes = 0
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_filtering() -> None:
        nonlocal passes
        with PreSendCheck.from_url(CLUSTER_URL, prefix=prefix, socket_timeout=10) as busy:
            while not stop.is_set():
                try:
                    got = _verdicts(busy, "email", now, batch=1000)
                except Exception as error:  # recorded: a pass may not fail either, but must never answer wrongly
                    errors.append(error)
                    continue
                mismatches.extend((c, got[c], expected[c]) for c in CUSTOMERS if got[c] != expected[c])
                passes += 1

    worker = threading.Thread(target=keep_filtering, daemon=True)
    worker.start()
    failed_over = False
    try:
        time.sleep(0.5)
        _failover(replica_port, primary_port)
        failed_over = True
        # `cluster` still maps the slot to the old primary, now a replica: its script call is refused, the ids are
        # retried on a fresh map, and every verdict is right
        stale_owner = cluster._slot_owner[slot]
        assert _verdicts(cluster, "email", now) == expected
        assert cluster._slot_owner[slot] != stale_owner
        assert cluster._slot_owner[slot].endswith(f":{replica_port}")
        assert cluster.script_unusable is None  # it stayed on the script path
        time.sleep(0.5)
    finally:
        try:
            if failed_over:  # back to the roles the stack started with
                _failover(primary_port, replica_port)
            time.sleep(0.5)
        finally:
            stop.set()
            worker.join(60)
    assert not mismatches, mismatches[:5]
    assert not errors, errors[:3]  # nor did any pass fail: the retries on a fresh slot map absorbed the failover
    assert passes >= 2, passes
    assert _verdicts(cluster, "email", now) == expected
    assert _node_id_and_role(primary_port)[1] == "master"


def _ids_sharing_a_slot(count: int) -> tuple[int, list[str]]:
    """``count`` customer ids whose keys share one hash slot."""
    by_slot: dict[int, list[str]] = {}
    for number in range(400_000):
        customer = f"reshard-{number}"
        same = by_slot.setdefault(key_slot(customer_tag(customer).encode()), [])
        same.append(customer)
        if len(same) == count:
            return key_slot(customer_tag(customer).encode()), same
    raise AssertionError(f"no slot with {count} ids")


@pytest.mark.cluster
@pytest.mark.skipif(CLUSTER_URL is None, reason=f"the cluster profile is not in use: {HOW_TO_RUN}")
def test_a_slot_being_resharded_is_answered_right_key_by_key(cluster: PreSendCheck, prefix: str) -> None:
    """Mid-reshard a slot's keys sit on two nodes (MIGRATING on its owner, IMPORTING on the target): a key already
    moved is answered ASK, and a customer with one key moved and one not gets TRYAGAIN for a two-key MGET until the
    slot's migration ends. is_allowed and the bulk filter (whose script cannot follow ASK) must still answer every
    customer of that slot right: by single-key GETs, which follow ASK."""
    client = cluster.client
    assert isinstance(client, RedisCluster)
    now = int(time.time() * 1000)
    minute = (now // 60_000) % 1440
    slot, ids = _ids_sharing_a_slot(6)
    block = orjson.dumps({"action": "block", "reason": "cap", "until": None, "until_ms": now + DAY})
    quiet = {
        "customer_id": "",
        "timezone": "UTC",
        "quiet_hours": {"email": {"start": _clock(minute - 60), "end": _clock(minute + 60)}},
    }
    blocked, quiet_now, allowed = ids[0:2] + ids[4:5], ids[2:3], ids[3:4] + ids[5:6]
    for customer in blocked:
        client.set(block_key(prefix, "email", customer), block, px=DAY)
    for customer in quiet_now + ids[4:5]:  # the last blocked one has a preferences key too
        client.set(prefs_key(prefix, customer), orjson.dumps({**quiet, "customer_id": customer}), px=DAY)
    expected = {customer: Verdict(False, "cap", None) for customer in blocked}
    expected |= {customer: Verdict(False, "quiet_hours") for customer in quiet_now}
    expected |= {customer: Verdict(True) for customer in allowed}

    owner = client.get_node_from_key(customer_tag(ids[0]))
    source = redis.Redis(host=owner.host, port=owner.port, socket_timeout=10)
    target_node = next(node for node in client.get_primaries() if node.name != owner.name)
    target = redis.Redis(host=target_node.host, port=target_node.port, socket_timeout=10)
    moved = [
        block_key(prefix, "email", ids[0]),  # a customer all of whose keys moved
        prefs_key(prefix, ids[2]),  # likewise, preferences only
        prefs_key(prefix, ids[4]),  # split: its block stays on the source, its preferences move
    ]
    try:
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.execute_command("CLUSTER", "MYID"))
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.execute_command("CLUSTER", "MYID"))
        source.execute_command("MIGRATE", target_node.host, target_node.port, "", 0, 5000, "KEYS", *moved)
        print(f"slot {slot} migrating {owner.name} -> {target_node.name}, moved {len(moved)} of its keys: {moved}")
        target.execute_command("ASKING")
        with pytest.raises(TryAgainError):  # what the split customer's MGET meets (TRYAGAIN)
            target.mget([block_key(prefix, "email", ids[4]), prefs_key(prefix, ids[4])])

        singles = {customer: cluster.is_allowed(customer, "email", now) for customer in ids}
        bulk = dict(cluster.filter(ids, "email", now))
        with PreSendCheck.from_url(CLUSTER_URL, prefix=prefix, socket_timeout=10) as fresh:  # a fresh slot map
            fresh_bulk = dict(fresh.filter(ids, "email", now))
            assert fresh.script_unusable is None  # a reshard is no reason to leave the script for good
    finally:
        for key in moved:  # off the target (it holds them only while importing), then the slot as it was
            target.execute_command("ASKING")
            target.delete(key)
        for node in (target, source):
            node.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        assert target.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        source.close()
        target.close()
    assert singles == expected
    assert bulk == expected
    assert fresh_bulk == expected
    print(f"verified: is_allowed and filter (stale and fresh slot map) right for the slot's {len(ids)} customers")
