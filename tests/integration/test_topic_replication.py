"""The worker's topics on the cluster profile (3 brokers, default.replication.factor 3, min.insync.replicas 2):
created replicated, written with acks=all in a transaction, and a replication the cluster cannot give refused.

Skipped unless the environment describes the cluster profile (`eval "$(deploy/local/stack.sh env --cluster)"`,
whose FATIGUE_REDIS_URL carries `cluster=1`), as tests/integration/test_cluster_stack.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from fatigue.clock import partition_for_key
from streams.settings import Settings
from streams.worker import ensure_topics

HOW_TO_RUN = 'start it with `deploy/local/stack.sh up --cluster` and `eval "$(deploy/local/stack.sh env --cluster)"`'
ON_CLUSTER = parse_qs(urlsplit(os.environ.get("FATIGUE_REDIS_URL", "")).query).get("cluster") == ["1"]

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not ON_CLUSTER, reason=f"the cluster profile is not in use: {HOW_TO_RUN}"),
]


def _settings(**changes: object) -> Settings:
    run = uuid.uuid4().hex[:10]
    names = {
        field: f"replication-{field.removesuffix('_topic')}-{run}"
        for field in ("events_topic", "decisions_topic", "prefs_topic", "dlq_topic", "violations_topic")
    }
    return replace(
        Settings(bootstrap=os.environ["FATIGUE_BOOTSTRAP"], partitions=3, app_id=f"replication-{run}", **names),
        **changes,  # type: ignore[arg-type]
    )


def _topics(settings: Settings) -> list[str]:
    return [
        settings.events_topic,
        settings.decisions_topic,
        settings.prefs_topic,
        settings.dlq_topic,
        settings.violations_topic,
        settings.changelog_topic,
    ]


@pytest.fixture
def admin() -> Iterator[KafkaAdminClient]:
    servers = os.environ.get("FATIGUE_BOOTSTRAP", "")
    if len(servers.split(",")) < 3:
        pytest.fail(f"FATIGUE_BOOTSTRAP={servers!r} does not list the cluster's three brokers; {HOW_TO_RUN}")
    client = KafkaAdminClient(bootstrap_servers=servers, client_id="pytest-replication", request_timeout_ms=30000)
    yield client
    client.close()


async def _write_in_a_transaction(settings: Settings) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap,
        transactional_id=f"{settings.app_id}-test",
        enable_idempotence=True,
        acks="all",
    )
    await producer.start()
    try:
        async with producer.transaction():
            # on the customer's partition, as the pipeline places decisions (a second ensure_topics checks that)
            partition = partition_for_key(b"c1", settings.partitions)
            metadata = await producer.send_and_wait(settings.decisions_topic, b"{}", key=b"sms:c1", partition=partition)
        return metadata.offset
    finally:
        await producer.stop()


@pytest.mark.parametrize("explicit", [False, True], ids=["broker-defaults", "explicit-3-and-2"])
def test_the_worker_creates_its_topics_replicated_and_an_acks_all_transaction_commits(
    admin: KafkaAdminClient, explicit: bool
) -> None:
    settings = _settings(replication_factor=3, min_insync_replicas=2) if explicit else _settings()
    topics = _topics(settings)
    try:
        ensure_topics(settings)
        admin.wait_for_topics(topics, timeout_ms=30000)
        for meta in admin.describe_topics(topics):
            assert [len(p["replica_nodes"]) for p in meta["partitions"]] == [3, 3, 3], meta
        resources = [ConfigResource(ConfigResourceType.TOPIC, t, configs=["min.insync.replicas"]) for t in topics]
        described = admin.describe_configs(resources, config_filter="all")["topic"]
        assert {t: described[t]["min.insync.replicas"]["value"] for t in topics} == dict.fromkeys(topics, "2")

        assert asyncio.run(_write_in_a_transaction(settings)) == 0
        ensure_topics(settings)  # a restart accepts them as made
    finally:
        admin.delete_topics(topics, timeout_ms=30000, raise_errors=False)


def test_more_replicas_than_brokers_are_refused_and_nothing_is_created(admin: KafkaAdminClient) -> None:
    settings = _settings(replication_factor=4)
    with pytest.raises(SystemExit, match=r"replication factor 4 \(--replication-factor\) but 3 live brokers"):
        ensure_topics(settings)
    assert not set(_topics(settings)) & set(admin.list_topics())


def test_an_existing_topic_with_one_replica_is_warned_about_and_left_alone(
    admin: KafkaAdminClient, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings()
    topics = _topics(settings)
    admin.create_topics({settings.events_topic: {"num_partitions": 3, "replication_factor": 1}}, timeout_ms=30000)
    try:
        with caplog.at_level(logging.WARNING, logger="fatigue.worker"):
            ensure_topics(settings)
        assert f"topic {settings.events_topic} has replication factor 1, below 3" in caplog.text
        (meta,) = admin.describe_topics([settings.events_topic])
        assert {len(p["replica_nodes"]) for p in meta["partitions"]} == {1}
    finally:
        admin.delete_topics(topics, timeout_ms=30000, raise_errors=False)
