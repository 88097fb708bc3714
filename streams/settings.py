"""Runtime settings of a worker (brokers, Redis, topics, ports): from the environment and the command line.

Kept apart from the policy on purpose: the policy is what the business decides, these are where things run.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from fatigue.timeutil import parse_duration_ms
from streams.redis_keys import check_prefix, is_cluster_url


@dataclass(frozen=True, slots=True)
class Settings:
    bootstrap: str = "127.0.0.1:19092"
    redis_url: str = "redis://127.0.0.1:16379/0"
    policy_path: str = "config/policies/default.toml"
    app_id: str = "fatigue-guard"
    events_topic: str = "fatigue.events.v1"
    decisions_topic: str = "fatigue.blocks.v1"
    dlq_topic: str = "fatigue.dlq.v1"
    violations_topic: str = "fatigue.violations.v1"
    prefs_topic: str = "fatigue.prefs.v1"
    partitions: int = 6
    data_dir: str = ".cache/worker"
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    redis_prefix: str = "fatigue"
    # how far partition event time must pass an unread deadline before it fires (see fatigue.clock)
    deadline_settle_ms: int = 3_600_000
    # a partition with no input for this long, and nothing left to read, is quiet: wall clock takes over
    quiet_after_s: float = 5.0
    # on a quiet partition, deadlines up to wall clock minus this fire, and expired blocks are tombstoned
    wall_settle_ms: int = 60_000
    tick_interval_s: float = 1.0
    redis_batch: int = 500
    # The pipeline takes up to this many input records per batch (what has arrived; it waits up to
    # input_batch_wait_s only when nothing has). Each partition's share of a batch is one transaction, whose commit
    # costs 10-25 ms on loopback: larger batches under load amortise it, an idle stream still gets small ones.
    input_batch: int = 5000
    input_batch_wait_s: float = 0.02
    # an open transaction older than this is aborted by the broker (a worker frozen mid-batch)
    transaction_timeout_s: float = 60.0
    # which core decides: "native" (the Rust port, needs fatigue._native built), "python" (the engine of record),
    # or "auto" (native where it is built)
    engine: str = "auto"
    # decoded customer states kept in memory per partition (the rest are read from the local store when needed)
    state_cache_customers: int = 100_000
    # A worker that dies without leaving the group (SIGKILL, a lost node) keeps its partitions, unprocessed, until
    # the broker has not heard from it for this long. Faust's default is 60 s: a minute in which the customers of
    # those partitions are not guarded. Heartbeats come from the consumer's own thread every 3 s (a third of a
    # shorter session), so a busy agent does not miss them; the broker accepts 6 s to 30 min
    # (group.min/max.session.timeout.ms).
    session_timeout_s: float = 20.0
    # RocksDB's block cache, one for all the worker's partition stores (reads go to the in-memory states first)
    rocksdb_block_cache_bytes: int = 16 * 1024 * 1024
    # RocksDB's memtable per partition store (Faust's default was 64 MiB, 3 of them, per partition): states are
    # small and written once per committed transaction; 4 MiB x 2 keeps six partitions' memtables under 48 MiB
    rocksdb_write_buffer_bytes: int = 4 * 1024 * 1024
    # violations are labelled by sender in /metrics: this many distinct senders, the rest as "other"
    sender_label_limit: int = 50
    # how often lag, state size and active blocks are refreshed for /metrics (a scrape every 15 s sees fresh values)
    gauge_interval_s: float = 5.0
    # Replicas of each topic the worker creates; 0: 3, one per live broker when fewer, or the brokers'
    # default.replication.factor if larger (streams.topic_config.replication), so one default fits a single node
    # and a cluster. Existing topics are not altered.
    replication_factor: int = 0
    # min.insync.replicas set on the topics the worker creates; 0: 2 with 3 or more replicas, else 1, or the brokers'
    # default if larger. Writes are acks=all: a partition with fewer in-sync replicas than this refuses them.
    min_insync_replicas: int = 0
    # Replicas of each Redis master that must hold the view's writes before it acknowledges them (commits its
    # offsets): -1 is 1 on a Redis Cluster URL, 0 on a single Redis. The bound this gives senders after a failover
    # is in the README ("Reliability"). The wait gives up after redis_wait_timeout_ms and tries again a second later.
    redis_wait_replicas: int = -1
    redis_wait_timeout_ms: int = 200
    # Also write the Redis key layout before hash tags (docs/contract.md, "Migrating from the legacy keys"):
    # "auto" is on for a single Redis and off for a Redis Cluster (where that layout cannot work); "on" / "off".
    redis_legacy_keys: str = "auto"
    log_level: str = "info"

    @property
    def datadir(self) -> Path:
        return Path(self.data_dir)

    @property
    def changelog_topic(self) -> str:
        """The compacted topic the customer states are written to (the previous Faust table's changelog name, so an
        upgraded worker restores the states it kept)."""
        return f"{self.app_id}-customer-state-v1-changelog"

    @property
    def heartbeat_interval_s(self) -> float:
        """At most a third of the session (Kafka's advice): with 6 s and 3 s beats one late beat loses the member."""
        return min(3.0, self.session_timeout_s / 3)

    @property
    def transaction_timeout_ms(self) -> int:
        return int(self.transaction_timeout_s * 1000)

    @property
    def redis_cluster(self) -> bool:
        return is_cluster_url(self.redis_url)

    @property
    def redis_replicas_to_wait_for(self) -> int:
        if self.redis_wait_replicas >= 0:
            return self.redis_wait_replicas
        return 1 if self.redis_cluster else 0

    @property
    def redis_writes_legacy_keys(self) -> bool:
        return self.redis_legacy_keys == "on" or (self.redis_legacy_keys == "auto" and not self.redis_cluster)

    @property
    def redis_view_group(self) -> str:
        """The consumer group that follows the decisions and preferences topics into Redis."""
        return f"{self.app_id}.redis-view"


_ENV = {
    "bootstrap": "FATIGUE_BOOTSTRAP",
    "redis_url": "FATIGUE_REDIS_URL",
    "policy_path": "FATIGUE_POLICY",
    "app_id": "FATIGUE_APP_ID",
    "events_topic": "FATIGUE_EVENTS_TOPIC",
    "decisions_topic": "FATIGUE_DECISIONS_TOPIC",
    "dlq_topic": "FATIGUE_DLQ_TOPIC",
    "violations_topic": "FATIGUE_VIOLATIONS_TOPIC",
    "prefs_topic": "FATIGUE_PREFS_TOPIC",
    "partitions": "FATIGUE_PARTITIONS",
    "data_dir": "FATIGUE_DATA_DIR",
    "web_port": "FATIGUE_WEB_PORT",
    "web_host": "FATIGUE_WEB_HOST",
    "redis_prefix": "FATIGUE_REDIS_PREFIX",
    "deadline_settle_ms": "FATIGUE_DEADLINE_SETTLE",
    "quiet_after_s": "FATIGUE_QUIET_AFTER",
    "wall_settle_ms": "FATIGUE_WALL_SETTLE",
    "log_level": "FATIGUE_LOG_LEVEL",
    "input_batch": "FATIGUE_INPUT_BATCH",
    "input_batch_wait_s": "FATIGUE_INPUT_BATCH_WAIT",
    "sender_label_limit": "FATIGUE_SENDER_LABEL_LIMIT",
    "session_timeout_s": "FATIGUE_SESSION_TIMEOUT",
    "engine": "FATIGUE_ENGINE",
    "state_cache_customers": "FATIGUE_STATE_CACHE_CUSTOMERS",
    "gauge_interval_s": "FATIGUE_GAUGE_INTERVAL",
    "replication_factor": "FATIGUE_REPLICATION_FACTOR",
    "min_insync_replicas": "FATIGUE_MIN_INSYNC_REPLICAS",
    "redis_wait_replicas": "FATIGUE_REDIS_WAIT_REPLICAS",
    "redis_wait_timeout_ms": "FATIGUE_REDIS_WAIT_TIMEOUT_MS",
    "redis_legacy_keys": "FATIGUE_REDIS_LEGACY_KEYS",
}
_DURATION_FIELDS = {"deadline_settle_ms", "wall_settle_ms"}


def _convert(name: str, raw: str) -> object:
    if name in _DURATION_FIELDS:
        return parse_duration_ms(raw)
    default = getattr(Settings(), name)
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def settings_from(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Defaults, overridden by ``FATIGUE_*`` environment variables, overridden by command-line options."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name, variable in _ENV.items():
        if variable in env and env[variable] != "":
            values[name] = _convert(name, env[variable])
    parser = argparse.ArgumentParser(prog="fatigue worker", description="Run the fatigue-guard streaming worker.")
    for item in fields(Settings):
        option = "--" + item.name.removesuffix("_ms").removesuffix("_s").replace("_", "-")
        if item.name in ("deadline_settle_ms", "wall_settle_ms"):
            help_text = f"duration like 1h (env {_ENV.get(item.name)})"
        else:
            help_text = f"default {item.default!r}" + (f", env {_ENV[item.name]}" if item.name in _ENV else "")
        parser.add_argument(option, dest=item.name, default=None, help=help_text)
    args = parser.parse_args(argv or [])
    for item in fields(Settings):
        raw = getattr(args, item.name)
        if raw is not None:
            values[item.name] = _convert(item.name, raw)
    settings = replace(Settings(), **values)  # type: ignore[arg-type]
    if settings.partitions < 1:
        raise SystemExit("fatigue worker: --partitions must be >= 1")
    if settings.input_batch < 1 or settings.input_batch_wait_s <= 0:
        raise SystemExit("fatigue worker: --input-batch must be >= 1 and --input-batch-wait > 0 (seconds)")
    if settings.engine not in ("auto", "native", "python"):
        raise SystemExit("fatigue worker: --engine must be auto, native or python")
    if settings.state_cache_customers < 1:
        raise SystemExit("fatigue worker: --state-cache-customers must be >= 1")
    if settings.gauge_interval_s <= 0:
        raise SystemExit("fatigue worker: --gauge-interval must be > 0 (seconds)")
    if not 6 <= settings.session_timeout_s <= 1800:
        raise SystemExit("fatigue worker: --session-timeout must be 6 to 1800 seconds (the broker's bounds)")
    if settings.replication_factor < 0 or settings.min_insync_replicas < 0:
        raise SystemExit(
            "fatigue worker: --replication-factor and --min-insync-replicas must be >= 0 "
            "(0: the default for the cluster)"
        )
    if 0 < settings.replication_factor < settings.min_insync_replicas:
        # checked again against the broker's defaults when a topic is created (streams.topic_config)
        raise SystemExit(
            f"fatigue worker: --min-insync-replicas {settings.min_insync_replicas} is above --replication-factor "
            f"{settings.replication_factor}: every acks=all write would be refused; lower it or add replicas"
        )
    try:
        check_prefix(settings.redis_prefix)
        cluster = settings.redis_cluster
    except ValueError as error:
        raise SystemExit(f"fatigue worker: {error}") from None
    if settings.redis_legacy_keys not in ("auto", "on", "off"):
        raise SystemExit("fatigue worker: --redis-legacy-keys must be auto, on or off")
    if cluster and settings.redis_legacy_keys == "on":
        raise SystemExit(
            "fatigue worker: --redis-legacy-keys on needs a single Redis: on a Redis Cluster a customer's legacy keys "
            "lie in different hash slots (docs/contract.md, Redis)"
        )
    if settings.redis_wait_timeout_ms < 1:
        raise SystemExit("fatigue worker: --redis-wait-timeout must be >= 1 (milliseconds)")
    return settings
