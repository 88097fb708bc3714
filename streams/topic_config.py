"""Replication of the worker's topics: what it creates them with, what it refuses, what it warns about.

Pure functions of the settings and what the cluster reports (``Cluster``), so they are tested without Kafka;
``streams.worker.ensure_topics`` gathers the facts and applies them. The worker's writes are acks=all: a write
needs ``min.insync.replicas`` replicas in sync, so a topic with fewer replicas than that refuses every write, and
one with exactly as many stops taking writes when one of its brokers is down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.settings import Settings


@dataclass(frozen=True, slots=True)
class Cluster:
    """What the worker needs to know of the brokers: how many are live, and their defaults for new topics."""

    live_brokers: int
    default_replication_factor: int
    default_min_insync_replicas: int


def replication(settings: Settings, cluster: Cluster) -> tuple[int, int]:
    """The replication factor and min.insync.replicas the worker's new topics get (0 in a setting: the broker's)."""
    return (
        settings.replication_factor or cluster.default_replication_factor,
        settings.min_insync_replicas or cluster.default_min_insync_replicas,
    )


def creation_refusal(settings: Settings, cluster: Cluster) -> str | None:
    """Why the worker must not create its topics with these settings on this cluster, or None. Checked only when
    a topic is to be created: a worker restarted while a broker is down must still start on the topics it has."""
    factor, min_isr = replication(settings, cluster)
    factor_from = "--replication-factor" if settings.replication_factor else "the broker's default.replication.factor"
    if factor > cluster.live_brokers:
        return (
            f"fatigue worker: replication factor {factor} ({factor_from}) but {cluster.live_brokers} live brokers: "
            f"set --replication-factor to at most {cluster.live_brokers}, or start the missing brokers"
        )
    if min_isr > factor:
        min_isr_from = "--min-insync-replicas" if settings.min_insync_replicas else "the broker's min.insync.replicas"
        return (
            f"fatigue worker: min.insync.replicas {min_isr} ({min_isr_from}) is above replication factor {factor}: "
            f"every acks=all write would be refused; set --min-insync-replicas {factor} or less, or more replicas"
        )
    return None


def new_topic_spec(settings: Settings, config: dict[str, str]) -> dict[str, Any]:
    """kafka-python's ``create_topics`` entry for one of the worker's topics."""
    configs = dict(config)
    if settings.min_insync_replicas:
        configs["min.insync.replicas"] = str(settings.min_insync_replicas)
    # -1: the broker applies its default.replication.factor (CreateTopics v4+, Kafka >= 2.4)
    return {
        "num_partitions": settings.partitions,
        "replication_factor": settings.replication_factor or -1,
        "configs": configs,
    }


def topic_warnings(topic: str, factor: int, min_isr: int, wanted_factor: int) -> list[str]:
    """What is fragile in a topic the worker uses (``factor``: its fewest replicas of a partition) given the
    replication factor the worker would create it with. Not fatal: existing topics are the operator's."""
    warnings = []
    if factor < wanted_factor:
        warnings.append(
            f"topic {topic} has replication factor {factor}, below {wanted_factor}: a lost broker can lose its "
            f"records; add replicas (kafka-reassign-partitions) or recreate it"
        )
    if min_isr > factor:
        warnings.append(
            f"topic {topic} has min.insync.replicas {min_isr} above its replication factor {factor}: acks=all "
            f"writes to it are refused; lower min.insync.replicas (kafka-configs --alter)"
        )
    elif min_isr == factor > 1:
        # with one replica there is nothing to tolerate: the single-node stack is not warned about
        warnings.append(
            f"topic {topic} has min.insync.replicas {min_isr} = its replication factor: one broker down stops "
            f"writes to it; set min.insync.replicas to {factor - 1} (kafka-configs --alter)"
        )
    return warnings
