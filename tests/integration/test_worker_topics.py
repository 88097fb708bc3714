"""``fatigue worker`` makes sure of its topics on the real broker: creates what is missing, refuses what it cannot
work with (a compacted output that is not compacted, partition counts it is not co-partitioned with)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from streams.settings import Settings
from streams.worker import ensure_topics


def _settings(bootstrap_servers: str, unique_name: Callable[[str], str], **topics: str) -> Settings:
    names = {
        "events_topic": unique_name("events"),
        "decisions_topic": unique_name("decisions"),
        "prefs_topic": unique_name("prefs"),
        "dlq_topic": unique_name("dlq"),
        "violations_topic": unique_name("violations"),
        **topics,
    }
    return Settings(bootstrap=bootstrap_servers, partitions=3, **names)


def _cleanup_policy(admin: KafkaAdminClient, topic: str) -> str:
    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=["cleanup.policy"])])
    entry = described["topic"][topic].get("cleanup.policy")  # left out when it is the broker's default, delete
    return "delete" if entry is None else str(entry["value"])


def test_missing_topics_are_created_compacted_where_they_must_be_and_a_second_start_accepts_them(
    bootstrap_servers: str, kafka_admin: KafkaAdminClient, unique_name: Callable[[str], str]
) -> None:
    settings = _settings(bootstrap_servers, unique_name)
    created = [
        settings.events_topic,
        settings.decisions_topic,
        settings.prefs_topic,
        settings.dlq_topic,
        settings.violations_topic,
    ]
    try:
        ensure_topics(settings)
        kafka_admin.wait_for_topics(created, timeout_ms=30000)
        assert _cleanup_policy(kafka_admin, settings.decisions_topic) == "compact"
        assert _cleanup_policy(kafka_admin, settings.prefs_topic) == "compact"
        assert _cleanup_policy(kafka_admin, settings.events_topic) == "delete"
        partitions = {meta["name"]: len(meta["partitions"]) for meta in kafka_admin.describe_topics(created)}
        assert set(partitions.values()) == {3}
        ensure_topics(settings)  # a restart finds them as it made them
    finally:
        kafka_admin.delete_topics(created, timeout_ms=30000, raise_errors=False)


def test_an_existing_decisions_topic_that_is_not_compacted_is_refused(
    bootstrap_servers: str,
    topic_factory: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    # with retention, an indefinite opt-out would be deleted from the topic, and the Redis view would follow
    decisions = topic_factory("decisions", partitions=3)
    settings = _settings(bootstrap_servers, unique_name, decisions_topic=decisions)
    with pytest.raises(SystemExit, match=f"{decisions} exists without cleanup.policy=compact"):
        ensure_topics(settings)


def test_an_existing_compacted_output_with_another_partition_count_is_refused(
    bootstrap_servers: str,
    topic_factory: Callable[..., str],
    unique_name: Callable[[str], str],
) -> None:
    prefs = topic_factory("prefs", partitions=2, config={"cleanup.policy": "compact"})
    settings = _settings(bootstrap_servers, unique_name, prefs_topic=prefs)
    with pytest.raises(SystemExit, match=f"{prefs} has 2 partitions but --partitions is 3"):
        ensure_topics(settings)


def test_a_decisions_topic_placed_by_whole_key_is_refused_and_one_placed_by_customer_accepted(
    bootstrap_servers: str, topic_factory: Callable[..., str], unique_name: Callable[[str], str]
) -> None:
    """Decisions go to their customer's partition (murmur2 of the customer id, as the input). A topic written by
    the earlier worker, which placed them by the murmur2 of the whole key, would leave a key on two partitions."""
    from kafka import KafkaProducer

    from fatigue.clock import partition_for_key

    settings_of = {}
    for layout in ("customer", "whole-key"):
        topic = topic_factory(f"decisions-{layout}", partitions=3, config={"cleanup.policy": "compact"})
        producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
        for number in range(20):
            key = f"email:cust-{number}".encode()
            placed_by = key if layout == "whole-key" else key.split(b":", 1)[1]
            producer.send(topic, key=key, value=b"{}", partition=partition_for_key(placed_by, 3))
        producer.flush()
        producer.close()
        settings_of[layout] = _settings(bootstrap_servers, unique_name, decisions_topic=topic)
    ensure_topics(settings_of["customer"])
    with pytest.raises(SystemExit, match="placed by their whole key"):
        ensure_topics(settings_of["whole-key"])


def test_a_replication_factor_the_single_broker_cannot_give_is_refused_on_existing_topics_too(
    bootstrap_servers: str, kafka_admin: KafkaAdminClient, unique_name: Callable[[str], str]
) -> None:
    settings = _settings(bootstrap_servers, unique_name)
    created = [settings.events_topic, settings.decisions_topic, settings.prefs_topic]
    created += [settings.dlq_topic, settings.violations_topic, settings.changelog_topic]
    try:
        ensure_topics(settings)  # one replica each, on the single node
        asked_three = replace(settings, replication_factor=3)
        with pytest.raises(SystemExit, match=r"--replication-factor 3 but topic \S+ has 1 replicas and 1 live brokers"):
            ensure_topics(asked_three)
        ensure_topics(settings)  # the default still starts on them
    finally:
        kafka_admin.delete_topics(created, timeout_ms=30000, raise_errors=False)
