"""Prometheus metrics of the worker. Labels never carry customer ids (unbounded, and personal data)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "fatigue_events_total", "Accepted input events", ["type", "channel", "category"], registry=r
        )
        self.rejected = Counter(
            "fatigue_rejected_total", "Inputs sent to the dead-letter topic", ["reason"], registry=r
        )
        self.decisions = Counter(
            "fatigue_decisions_total", "Decisions emitted", ["action", "reason", "channel"], registry=r
        )
        self.violations = Counter(
            "fatigue_violations_total",
            "Sender violations (contact while blocked or in quiet hours)",
            ["kind", "channel", "sender"],
            registry=r,
        )
        self.rerouted = Counter(
            "fatigue_rerouted_total",
            "Inputs forwarded to their customer's partition (producer used another partitioner)",
            registry=r,
        )
        self.erasures = Counter("fatigue_erasures_total", "Customers erased on request", registry=r)
        self.tombstones = Counter(
            "fatigue_tombstones_total", "Expired blocks tombstoned on the decisions topic", registry=r
        )
        self.repaired = Counter(
            "fatigue_redelivery_repairs_total",
            "Latest decisions re-sent because a redelivered event was seen",
            registry=r,
        )
        self.deadlines_fired = Counter(
            "fatigue_deadline_advances_total", "Customers advanced by a partition clock", ["clock"], registry=r
        )
        self.latency = Histogram(
            "fatigue_event_to_decision_seconds",
            "Wall-clock time from an event's timestamp to its decision (for live traffic)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.redis_writes = Counter("fatigue_redis_writes_total", "Redis keys written or deleted", ["op"], registry=r)
        self.redis_failures = Counter("fatigue_redis_failures_total", "Failed Redis batches (retried)", registry=r)
        self.redis_reconciles = Counter("fatigue_redis_reconciles_total", "Full Redis reconciliations", registry=r)
        self.state_bytes = Histogram(
            "fatigue_state_bytes",
            "Serialised per-customer state size",
            buckets=(64, 128, 256, 512, 1024, 2048, 4096, 16384, 65536),
            registry=r,
        )
        self.partition_event_time = Gauge(
            "fatigue_partition_event_time_seconds",
            "Newest accepted event time per input partition",
            ["partition"],
            registry=r,
        )
