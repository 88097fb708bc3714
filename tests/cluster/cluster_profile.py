"""The cluster profile as its tests see it: whether its environment is exported, the Redis the workers use, the
Kafka brokers (who leads what, faults through deploy/local/stack.sh ``kill-broker``, ``stop-broker``,
``start-broker``, ``leader``, the wait for every replica to be back in sync), and a producer paced to outlast
the faults."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from kafka.admin import KafkaAdminClient

from streams.redis_keys import is_cluster_url
from tests.e2e.harness import REPO, GuardDeployment
from tests.e2e.parity import Messages

HOW_TO_RUN = 'start it with `deploy/local/stack.sh up --cluster` and `eval "$(deploy/local/stack.sh env --cluster)"`'
# `env --cluster` exports the Redis Cluster's URL (cluster=1): the tests skip without it
CLUSTER_IN_USE = is_cluster_url(os.environ.get("FATIGUE_REDIS_URL", ""))


def worker_redis_url() -> str:
    """The Redis the workers of these tests write their view to, and the parity checks read: the Redis Cluster of
    the profile (``env --cluster``), each deployment under its own key prefix."""
    url = os.environ.get("FATIGUE_REDIS_URL", "")
    assert is_cluster_url(url), f"FATIGUE_REDIS_URL={url!r} is not the Redis Cluster's; {HOW_TO_RUN}"
    return url


STACK = REPO / "deploy" / "local" / "stack.sh"
NODES = (1, 2, 3)
# Kafka's own topics a worker needs: its group's offsets and its transactions' state
INTERNAL_TOPICS = ("__consumer_offsets", "__transaction_state")


@dataclass(frozen=True)
class PartitionState:
    leader: int  # -1: none
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class KafkaCluster:
    """The three brokers of the cluster profile (``deploy/local/stack.sh up --cluster``)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def stack(self, *args: str, timeout_s: float = 240.0) -> str:
        """Run ``deploy/local/stack.sh ARGS --cluster``; its stdout (fails with its stderr)."""
        done = subprocess.run(
            [str(STACK), *args, "--cluster"], capture_output=True, text=True, timeout=timeout_s, cwd=REPO
        )
        assert done.returncode == 0, f"stack.sh {' '.join(args)} --cluster exited {done.returncode}:\n{done.stderr}"
        return done.stdout

    def leader(self, topic: str, partition: int) -> int:
        """The partition's leader, as the fault helper (``stack.sh leader TOPIC P``) names it."""
        return int(self.stack("leader", topic, str(partition), timeout_s=60).strip())

    def kill(self, node: int) -> None:
        self.stack("kill-broker", str(node))

    def stop(self, node: int) -> None:
        self.stack("stop-broker", str(node))

    def start(self, node: int) -> None:
        """Start the node again (a no-op when it runs); returns once it serves metadata."""
        self.stack("start-broker", str(node))

    def describe(self, topics: Iterable[str]) -> dict[tuple[str, int], PartitionState]:
        """(topic, partition) -> leader, replicas and in-sync replicas, from the metadata of a live broker."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
        try:
            described = admin.describe_topics(list(topics))
        finally:
            admin.close()
        return {
            (topic["name"], p["partition_index"]): PartitionState(
                p["leader_id"], tuple(sorted(p["replica_nodes"])), tuple(sorted(p["isr_nodes"]))
            )
            for topic in described
            for p in topic["partitions"]
        }

    def led_by(self, node: int, topics: Iterable[str]) -> dict[str, list[int]]:
        """topic -> the partitions ``node`` leads (topics where it leads none left out)."""
        led: dict[str, list[int]] = {}
        for (topic, partition), state in sorted(self.describe(topics).items()):
            if state.leader == node:
                led.setdefault(topic, []).append(partition)
        return led

    def existing(self, topics: Iterable[str]) -> list[str]:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
        try:
            present = set(admin.list_topics())
        finally:
            admin.close()
        return [topic for topic in topics if topic in present]

    def live_brokers(self) -> list[int]:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10_000)
        try:
            brokers = admin.describe_cluster()["brokers"]
        finally:
            admin.close()
        return sorted(broker["broker_id"] for broker in brokers if not broker.get("is_fenced"))

    def wait_until_led_without(self, node: int, topics: Iterable[str], timeout_s: float = 60.0) -> float:
        """Until every partition of ``topics`` has a leader other than ``node``; the seconds waited."""
        topics = list(topics)
        started = time.monotonic()
        while True:
            try:
                states = self.describe(topics)
                if states and all(state.leader not in (-1, node) for state in states.values()):
                    return time.monotonic() - started
            except Exception:
                states = {}
            assert time.monotonic() - started < timeout_s, f"partitions still led by {node} or leaderless: {states}"
            time.sleep(0.25)

    def wait_until_healthy(self, topics: Iterable[str] = (), timeout_s: float = 120.0) -> float:
        """Until all three brokers are live and every partition of ``topics`` and of Kafka's internal topics has its
        full replica set in sync (what a rolling restart waits for before the next broker); the seconds waited."""
        topics = list(topics)
        started = time.monotonic()
        lagging: object = "?"
        while time.monotonic() - started < timeout_s:
            try:
                if self.live_brokers() == list(NODES):
                    # Kafka's internal topics exist only once used (a fresh cluster has neither): those that do
                    wanted = [*self.existing(INTERNAL_TOPICS), *topics]
                    states = self.describe(wanted)
                    lagging = {
                        f"{topic}[{partition}]": state.isr
                        for (topic, partition), state in sorted(states.items())
                        if state.isr != state.replicas or state.leader == -1
                    }
                    missing = set(wanted) - {topic for topic, _ in states}
                    if missing:
                        lagging = f"topics not in the metadata yet: {sorted(missing)}"
                    elif not lagging:
                        return time.monotonic() - started
                else:
                    lagging = f"live brokers {self.live_brokers()}"
            except Exception as exc:
                lagging = repr(exc)
            time.sleep(0.5)
        raise AssertionError(f"the cluster is not healthy after {timeout_s}s; out of sync: {lagging}")

    def restore(self) -> None:
        """Every node running and in sync again, whatever a test left behind."""
        for node in NODES:
            self.start(node)
        self.wait_until_healthy()


class PacedProducer:
    """Produces a stream in chunks from a thread, pausing between chunks so that it runs while faults are
    injected, and holding back what lies beyond ``limit`` (:meth:`release` moves it on; :meth:`hurry` sends the
    rest without pauses). Each chunk is sent by the harness's producer (idempotent, acks=all, one request in
    flight: the input topic holds each message once, in order, across leader changes)."""

    def __init__(
        self, deployment: GuardDeployment, messages: Messages, chunk: int, pause_s: float, limit: int | None = None
    ) -> None:
        self.deployment = deployment
        self.messages = messages
        self.chunk = chunk
        self.pause_s = pause_s
        self.limit = len(messages) if limit is None else limit
        self.sent = 0
        self.error: BaseException | None = None
        self._hurry = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True, name="paced-producer")

    def start(self) -> PacedProducer:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while self.sent < len(self.messages):
                with self._changed:
                    self._changed.wait_for(lambda: self.sent < self.limit)
                end = min(self.sent + self.chunk, self.limit)
                self.sent += self.deployment.produce(self.messages[self.sent : end])
                self._hurry.wait(self.pause_s)
        except BaseException as exc:  # re-raised by join()
            self.error = exc

    def release(self, count: int) -> None:
        """Let ``count`` more messages go (paced as before)."""
        with self._changed:
            self.limit = min(self.limit + count, len(self.messages))
            self._changed.notify_all()

    def hurry(self) -> None:
        """Send everything left, without pauses."""
        self._hurry.set()
        self.release(len(self.messages))

    def join(self, timeout_s: float = 180.0) -> int:
        """Wait until everything was sent; the number of messages sent."""
        self.hurry()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the producer still runs after {timeout_s}s ({self.sent} sent)"
        if self.error is not None:
            raise AssertionError(f"producing the stream failed after {self.sent} messages") from self.error
        return self.sent
