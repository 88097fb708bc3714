"""Replication of the worker's topics: the settings, and what the worker refuses or warns about given the cluster
(pure functions: no Kafka)."""

from __future__ import annotations

import pytest

from streams.settings import Settings, settings_from
from streams.topic_config import (
    Cluster,
    creation_refusal,
    existing_topic_refusal,
    new_topic_spec,
    replication,
    topic_warnings,
)

SINGLE_NODE = Cluster(live_brokers=1, default_replication_factor=1, default_min_insync_replicas=1)
THREE_BROKERS = Cluster(live_brokers=3, default_replication_factor=3, default_min_insync_replicas=2)
# Kafka's own broker defaults (default.replication.factor 1, min.insync.replicas 1) on a real cluster
THREE_BROKERS_KAFKA_DEFAULTS = Cluster(live_brokers=3, default_replication_factor=1, default_min_insync_replicas=1)


def test_the_defaults_are_the_brokers_so_one_default_fits_a_single_node_and_a_cluster():
    settings = settings_from([], environ={})
    assert (settings.replication_factor, settings.min_insync_replicas) == (0, 0)
    assert replication(settings, SINGLE_NODE) == (1, 1)
    assert replication(settings, THREE_BROKERS) == (3, 2)
    assert creation_refusal(settings, SINGLE_NODE) is None
    assert creation_refusal(settings, THREE_BROKERS) is None


def test_brokers_left_at_kafkas_defaults_still_get_durable_topics_from_the_worker():
    settings = Settings()
    assert replication(settings, THREE_BROKERS_KAFKA_DEFAULTS) == (3, 2)
    five = Cluster(live_brokers=5, default_replication_factor=1, default_min_insync_replicas=1)
    assert replication(settings, five) == (3, 2)
    two = Cluster(live_brokers=2, default_replication_factor=1, default_min_insync_replicas=1)
    assert replication(settings, two) == (2, 1)  # min ISR 2 of 2 would stop writes with one broker down
    # the brokers asking for more wins; an option wins over both
    four = Cluster(live_brokers=5, default_replication_factor=4, default_min_insync_replicas=3)
    assert replication(settings, four) == (4, 3)
    assert replication(Settings(replication_factor=1), THREE_BROKERS_KAFKA_DEFAULTS) == (1, 1)
    assert creation_refusal(settings, THREE_BROKERS_KAFKA_DEFAULTS) is None


def test_options_and_environment_set_them_and_the_command_line_wins():
    settings = settings_from(
        ["--replication-factor", "3"],
        environ={"FATIGUE_REPLICATION_FACTOR": "2", "FATIGUE_MIN_INSYNC_REPLICAS": "2"},
    )
    assert (settings.replication_factor, settings.min_insync_replicas) == (3, 2)
    assert settings_from(["--min-insync-replicas", "1"], environ={}).min_insync_replicas == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--replication-factor", "-1"], "must be >= 0"),
        (["--min-insync-replicas", "-2"], "must be >= 0"),
        (["--replication-factor", "2", "--min-insync-replicas", "3"], "--min-insync-replicas 3 is above"),
    ],
)
def test_impossible_settings_are_refused_when_parsed(argv, message):
    with pytest.raises(SystemExit, match=message):
        settings_from(argv, environ={})


def test_a_replication_factor_above_the_live_brokers_is_refused_with_what_to_change():
    refusal = creation_refusal(Settings(replication_factor=4), THREE_BROKERS)
    assert refusal is not None
    assert "replication factor 4 (--replication-factor) but 3 live brokers" in refusal
    assert "at most 3" in refusal
    # the broker's own default counts too: the cluster with a broker down
    two_live = Cluster(live_brokers=2, default_replication_factor=3, default_min_insync_replicas=2)
    refusal = creation_refusal(Settings(), two_live)
    assert refusal is not None and "the broker's default.replication.factor" in refusal
    assert creation_refusal(Settings(replication_factor=2), two_live) is None


def test_min_insync_replicas_above_the_replication_factor_is_refused_broker_defaults_included():
    refusal = creation_refusal(Settings(replication_factor=1), THREE_BROKERS)  # the broker's min ISR is 2
    assert refusal is not None
    assert "min.insync.replicas 2 (the broker's min.insync.replicas) is above replication factor 1" in refusal
    assert "--min-insync-replicas 1 or less" in refusal
    assert creation_refusal(Settings(replication_factor=1, min_insync_replicas=1), THREE_BROKERS) is None
    refusal = creation_refusal(Settings(min_insync_replicas=2), SINGLE_NODE)
    assert refusal is not None and "(--min-insync-replicas)" in refusal


def test_new_topics_are_created_with_their_replication_given_explicitly():
    compacted = {"cleanup.policy": "compact"}
    spec = new_topic_spec(Settings(partitions=6), SINGLE_NODE, compacted)
    assert spec == {
        "num_partitions": 6,
        "replication_factor": 1,
        "configs": {"cleanup.policy": "compact", "min.insync.replicas": "1"},
    }
    spec = new_topic_spec(Settings(partitions=3), THREE_BROKERS_KAFKA_DEFAULTS, compacted)
    assert spec["replication_factor"] == 3
    assert spec["configs"] == {"cleanup.policy": "compact", "min.insync.replicas": "2"}
    spec = new_topic_spec(Settings(partitions=3, replication_factor=2, min_insync_replicas=2), THREE_BROKERS, {})
    assert (spec["replication_factor"], spec["configs"]) == (2, {"min.insync.replicas": "2"})
    assert compacted == {"cleanup.policy": "compact"}  # the shared config is not changed


def test_an_existing_topic_no_write_can_reach_is_refused():
    refusal = existing_topic_refusal(Settings(), SINGLE_NODE, "t", topic_factor=1, topic_min_isr=2, written=True)
    assert refusal is not None
    assert "topic t has min.insync.replicas 2 above its replication factor 1" in refusal
    assert existing_topic_refusal(Settings(), SINGLE_NODE, "t", topic_factor=1, topic_min_isr=1, written=True) is None
    # the input topic is the senders' to write: warned about, the worker reads it
    assert existing_topic_refusal(Settings(), SINGLE_NODE, "t", 1, 2, written=False) is None


def test_an_explicit_replication_factor_neither_the_topic_nor_the_live_brokers_give_is_refused():
    # RF 3 asked on one broker whose topics have 1 replica: cannot be durable as asked
    refusal = existing_topic_refusal(
        Settings(replication_factor=3), SINGLE_NODE, "t", topic_factor=1, topic_min_isr=1, written=False
    )
    assert refusal is not None
    assert "--replication-factor 3 but topic t has 1 replicas and 1 live brokers" in refusal
    assert "at most 1" in refusal
    # a topic created with 3 replicas while one of the brokers is down: an outage, the worker must start
    two_live = Cluster(live_brokers=2, default_replication_factor=3, default_min_insync_replicas=2)
    assert existing_topic_refusal(Settings(replication_factor=3), two_live, "t", 3, 2, written=True) is None
    # a weaker topic the live brokers could give more replicas: the operator's to alter, warned about only
    assert existing_topic_refusal(Settings(replication_factor=3), THREE_BROKERS, "t", 1, 1, written=True) is None
    assert topic_warnings("t", factor=1, min_isr=1, wanted_factor=3)
    # the default (0) never refuses an existing topic for its replication
    assert existing_topic_refusal(Settings(), SINGLE_NODE, "t", 1, 1, written=True) is None


def test_fragile_topics_are_warned_about():
    assert topic_warnings("t", factor=3, min_isr=2, wanted_factor=3) == []
    assert topic_warnings("t", factor=1, min_isr=1, wanted_factor=1) == []  # the single node: nothing to tolerate
    (below,) = topic_warnings("t", factor=1, min_isr=1, wanted_factor=3)
    assert below.startswith("topic t has replication factor 1, below 3")
    (equal,) = topic_warnings("t", factor=3, min_isr=3, wanted_factor=3)
    assert "one broker down stops writes" in equal and "set min.insync.replicas to 2" in equal
    warnings = topic_warnings("t", factor=1, min_isr=2, wanted_factor=3)
    assert len(warnings) == 2 and "writes to it are refused" in warnings[1]
