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


# Replicas the worker asks for when neither the option nor the brokers ask for more: Kafka's own
# default.replication.factor is 1, which on a real cluster would create topics one lost disk can lose.
DURABLE_FACTOR = 3


def replication(settings: Settings, cluster: Cluster) -> tuple[int, int]:
    """The replication factor and min.insync.replicas the worker's new topics get. 0 in a setting: the larger of
    the broker's default and what fits the cluster (3 replicas, or one per live broker when fewer; min ISR 2 with 3
    or more replicas, else 1), so one default is right for one broker and for three whatever the brokers say."""
    factor = settings.replication_factor or max(
        cluster.default_replication_factor, min(DURABLE_FACTOR, cluster.live_brokers)
    )
    min_isr = settings.min_insync_replicas or max(cluster.default_min_insync_replicas, min(2, factor - 1))
    return factor, min_isr


def _factor_source(settings: Settings, cluster: Cluster) -> str:
    if settings.replication_factor:
        return "--replication-factor"
    if cluster.default_replication_factor >= min(DURABLE_FACTOR, cluster.live_brokers):
        return "the broker's default.replication.factor"
    return f"the worker's default: {DURABLE_FACTOR}, or one per live broker when fewer"


def _min_isr_source(settings: Settings, cluster: Cluster, factor: int) -> str:
    if settings.min_insync_replicas:
        return "--min-insync-replicas"
    if cluster.default_min_insync_replicas >= min(2, factor - 1):
        return "the broker's min.insync.replicas"
    return "the worker's default: 2 with 3 or more replicas, else 1"


def creation_refusal(settings: Settings, cluster: Cluster) -> str | None:
    """Why the worker must not create its topics with these settings on this cluster, or None."""
    factor, min_isr = replication(settings, cluster)
    if factor > cluster.live_brokers:
        return (
            f"fatigue worker: replication factor {factor} ({_factor_source(settings, cluster)}) but "
            f"{cluster.live_brokers} live brokers: set --replication-factor to at most {cluster.live_brokers}, or "
            f"start the missing brokers"
        )
    if min_isr > factor:
        return (
            f"fatigue worker: min.insync.replicas {min_isr} ({_min_isr_source(settings, cluster, factor)}) is above "
            f"replication factor {factor}: every acks=all write would be refused; set --min-insync-replicas {factor} "
            f"or less, or more replicas"
        )
    return None


def existing_topic_refusal(
    settings: Settings, cluster: Cluster, topic: str, topic_factor: int, topic_min_isr: int, *, written: bool
) -> str | None:
    """Why the worker must not start on an existing topic, or None. Only what cannot work or cannot be what the
    operator asked: a topic the worker writes (``written``; the input is the senders') whose every write is
    refused, or a --replication-factor that neither the topic nor the live brokers give. A topic created with more
    replicas than are live now is a broker down, not a refusal: a worker restarted during an outage must start."""
    if written and topic_min_isr > topic_factor:
        return (
            f"fatigue worker: topic {topic} has min.insync.replicas {topic_min_isr} above its replication factor "
            f"{topic_factor}: every acks=all write to it would be refused; lower its min.insync.replicas "
            f"(kafka-configs --alter) or add replicas"
        )
    wanted = settings.replication_factor
    if wanted and topic_factor < wanted and cluster.live_brokers < wanted:
        return (
            f"fatigue worker: --replication-factor {wanted} but topic {topic} has {topic_factor} replicas and "
            f"{cluster.live_brokers} live brokers: it cannot be durable as asked; set --replication-factor to at "
            f"most {max(topic_factor, cluster.live_brokers)}, or start the missing brokers and add replicas"
        )
    return None


def new_topic_spec(settings: Settings, cluster: Cluster, config: dict[str, str]) -> dict[str, Any]:
    """kafka-python's ``create_topics`` entry for one of the worker's topics: the replication of
    :func:`replication` given explicitly, so the topic says it whatever the brokers' defaults become."""
    factor, min_isr = replication(settings, cluster)
    return {
        "num_partitions": settings.partitions,
        "replication_factor": factor,
        "configs": {**config, "min.insync.replicas": str(min_isr)},
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
