"""``fatigue worker``: validate the policy, make sure the topics exist, then run the Faust worker."""

from __future__ import annotations

import asyncio
import logging
import sys

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as AioTopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError
from prometheus_client import disable_created_metrics

from fatigue import core_flavour
from fatigue.clock import partition_for_key
from fatigue.policy import PolicyError, load_policy
from fatigue.replay import tune_gc
from streams.settings import Settings, settings_from
from streams.topic_config import (
    Cluster,
    creation_refusal,
    existing_topic_refusal,
    new_topic_spec,
    replication,
    topic_warnings,
)

log = logging.getLogger("fatigue.worker")

# Compacted topics keep the latest record per key; tombstones are removed a day after compaction.
_COMPACTED = {"cleanup.policy": "compact", "delete.retention.ms": "86400000", "min.cleanable.dirty.ratio": "0.1"}


def ensure_topics(settings: Settings) -> None:
    """Create the guard's topics if missing. Refuse existing ones the guard cannot work with: an input topic or a
    compacted topic (decisions, preferences, the state changelog) whose partition count differs from ours (states
    and the Redis view's ownership of keys are co-partitioned with them), or a compacted topic that is not compacted
    (retention would delete indefinite opt-outs and customers' states). Refuse to create topics with a replication
    the cluster cannot give, and existing topics no write can reach or weaker than an explicit
    --replication-factor the live brokers cannot give (see streams.topic_config); warn about fragile ones."""
    wanted = {
        settings.events_topic: {},
        settings.decisions_topic: _COMPACTED,
        settings.prefs_topic: _COMPACTED,
        settings.dlq_topic: {},
        settings.violations_topic: {},
        settings.changelog_topic: _COMPACTED,
    }
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap, client_id="fatigue-worker-admin")
    try:
        cluster = _cluster(admin)
        factor, min_isr = replication(settings, cluster)
        existing = {meta["name"]: meta for meta in admin.describe_topics(list(wanted)) if not meta.get("error_code")}
        configs = _topic_configs(admin, list(existing))
        for name, config in wanted.items():
            if name not in existing:
                continue
            meta = existing[name]
            count = len(meta["partitions"])
            if (name == settings.events_topic or config is _COMPACTED) and count != settings.partitions:
                raise SystemExit(
                    f"fatigue worker: topic {name} has {count} partitions but --partitions is "
                    f"{settings.partitions}; the state table and the Redis view are co-partitioned with it"
                )
            if config is _COMPACTED and "compact" not in configs[name].get("cleanup.policy", "delete").split(","):
                raise SystemExit(
                    f"fatigue worker: topic {name} exists without cleanup.policy=compact; it must keep the "
                    f"latest record per key for good (indefinite opt-outs): alter it or delete it"
                )
            if name == settings.decisions_topic:
                _refuse_decisions_partitioned_by_key(settings)
            topic_factor = min((len(p["replica_nodes"]) for p in meta["partitions"]), default=0)
            topic_min_isr = int(configs[name].get("min.insync.replicas", cluster.default_min_insync_replicas))
            written = name != settings.events_topic
            refusal = existing_topic_refusal(settings, cluster, name, topic_factor, topic_min_isr, written=written)
            if refusal is not None:
                raise SystemExit(refusal)
            for warning in topic_warnings(name, topic_factor, topic_min_isr, factor):
                log.warning("%s", warning)
        missing = [name for name in wanted if name not in existing]
        if missing:
            refusal = creation_refusal(settings, cluster)
            if refusal is not None:
                raise SystemExit(refusal)
            for warning in topic_warnings(", ".join(missing), factor, min_isr, factor):
                log.warning("%s", warning)
        for name in missing:
            try:
                admin.create_topics({name: new_topic_spec(settings, cluster, wanted[name])})
                log.info(
                    "created topic %s (%d partitions, %d replicas, min.insync.replicas %d)",
                    name,
                    settings.partitions,
                    factor,
                    min_isr,
                )
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def _cluster(admin: KafkaAdminClient) -> Cluster:
    """The live brokers and their defaults for new topics (read from one of them: a cluster's brokers share them)."""
    brokers = [b for b in admin.describe_cluster()["brokers"] if not b.get("is_fenced")]
    keys = ["default.replication.factor", "min.insync.replicas"]
    resource = ConfigResource(ConfigResourceType.BROKER, str(brokers[0]["broker_id"]), configs=keys)
    described = next(iter(admin.describe_configs([resource], config_filter="all")["broker"].values()))
    return Cluster(
        live_brokers=len(brokers),
        default_replication_factor=int(described["default.replication.factor"]["value"]),
        default_min_insync_replicas=int(described["min.insync.replicas"]["value"]),
    )


def _refuse_decisions_partitioned_by_key(settings: Settings, sample: int = 200) -> None:
    """Refuse a decisions topic written by a worker before the transactional pipeline, which placed a decision by
    the murmur2 of its whole key ``{channel}:{customer_id}``. Decisions are now on their customer's partition
    (murmur2 of the customer id, as the input): mixed, a key would have records on two partitions and readers
    could apply an older one last. The first ``sample`` records of each partition are checked."""
    # a loop of its own, not asyncio.run: that would leave the main thread without a current loop for Faust
    loop = asyncio.new_event_loop()
    try:
        misplaced = loop.run_until_complete(_misplaced_decision(settings, sample))
    finally:
        loop.close()
    if misplaced is not None:
        key, partition = misplaced
        raise SystemExit(
            f"fatigue worker: topic {settings.decisions_topic} holds decisions placed by their whole key (written "
            f"before the transactional pipeline), e.g. {key!r} on partition {partition}; decisions now go to their "
            f"customer's partition. Give the worker a new --decisions-topic (or recreate this one) and let dialers "
            f"read that one"
        )


async def _misplaced_decision(settings: Settings, sample: int) -> tuple[bytes, int] | None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        tps = [AioTopicPartition(settings.decisions_topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp, offset in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, offset)
            ends[tp] = min(ends[tp], offset + sample)
        remaining = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    customer = (record.key or b"").split(b":", 1)[-1]
                    if record.key and partition_for_key(customer, settings.partitions) != tp.partition:
                        return record.key, tp.partition
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return None
    finally:
        await consumer.stop()


def _topic_configs(admin: KafkaAdminClient, topics: list[str]) -> dict[str, dict[str, str]]:
    """Each topic's cleanup.policy and min.insync.replicas, the broker's defaults included."""
    if not topics:
        return {}
    keys = ["cleanup.policy", "min.insync.replicas"]
    resources = [ConfigResource(ConfigResourceType.TOPIC, topic, configs=keys) for topic in topics]
    described = admin.describe_configs(resources, config_filter="all").get("topic", {})
    return {topic: {key: str(entry["value"]) for key, entry in described.get(topic, {}).items()} for topic in topics}


def main(argv: list[str] | None = None) -> int:
    settings = settings_from(argv)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        policy = load_policy(settings.policy_path)
    except PolicyError as error:
        print(f"fatigue worker: invalid policy, not starting: {error}", file=sys.stderr)
        return 2
    try:
        ensure_topics(settings)
    except KafkaError as error:
        print(f"fatigue worker: cannot reach Kafka at {settings.bootstrap}: {error}", file=sys.stderr)
        return 2
    from faust import Worker  # imported late: faust is heavy and --help should stay fast

    from streams.app import create_app

    tune_gc()  # the worker holds the same acyclic per-customer states in its caches
    # *_created series would double the scrape for a value no dashboard or alert of ours reads
    disable_created_metrics()  # type: ignore[no-untyped-call]
    app, _ = create_app(settings, policy)
    log.info(
        "starting worker %s: policy %s, %s core, input %s (%d partitions), decisions %s, redis %s, web :%d",
        settings.app_id,
        policy.version,
        core_flavour(),
        settings.events_topic,
        settings.partitions,
        settings.decisions_topic,
        settings.redis_url,
        settings.web_port,
    )
    worker = Worker(app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
    return 0
