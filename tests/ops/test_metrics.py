"""The worker's operational metrics without Kafka: active-block accounting, bounded labels, lint-clean output."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from fatigue.engine import Guard
from fatigue.events import CHANNELS, Rejection, parse_event
from fatigue.generate import generate_messages
from fatigue.state import CustomerState
from fatigue.testing import DAY, HOUR, policy_named
from streams.app import create_app
from streams.metrics import (
    INDEFINITE,
    NO_BLOCKS,
    OTHER_SENDER,
    UNKNOWN_SENDER,
    ActiveBlocks,
    BulkHistogram,
    Metrics,
    block_untils,
)
from streams.settings import settings_from
from tests.ops.support import OPERATIONS_DOC, tool

T = 1_790_000_000_000  # a whole second


def test_a_new_block_counts_until_it_ends_and_an_extension_counts_once():
    blocks = ActiveBlocks()
    blocks.reset(0, T)
    blocks.change(0, NO_BLOCKS, (None, T + 10_000, None))
    assert blocks.counts(T) == [0, 1, 0]
    blocks.change(0, (None, T + 10_000, None), (None, T + 90_000, None))  # the block is extended
    assert blocks.counts(T + 20_000) == [0, 1, 0]
    assert blocks.counts(T + 90_000) == [0, 0, 0]  # ends at its until: no message needed


def test_an_allow_or_an_erasure_ends_a_block_early_and_indefinite_blocks_stay():
    blocks = ActiveBlocks()
    blocks.reset(3, T)
    blocks.change(3, NO_BLOCKS, (T + DAY, INDEFINITE, T + HOUR))
    assert blocks.counts(T) == [1, 1, 1]
    blocks.change(3, (T + DAY, INDEFINITE, T + HOUR), (None, INDEFINITE, T + HOUR))  # allow on email
    assert blocks.counts(T + 1_000) == [0, 1, 1]
    assert blocks.counts(T + 30 * DAY) == [0, 1, 0]
    blocks.change(3, (None, INDEFINITE, T + HOUR), NO_BLOCKS)  # erased
    assert blocks.counts(T + 31 * DAY) == [0, 0, 0]


def test_a_block_already_over_is_not_counted_and_removing_it_later_is_harmless():
    blocks = ActiveBlocks()
    blocks.reset(0, T)
    assert blocks.counts(T + 5_000) == [0, 0, 0]
    blocks.change(0, NO_BLOCKS, (T + 1_000, None, None))  # e.g. a replayed event's block, over by wall clock
    blocks.change(0, NO_BLOCKS, (T + 60_000, None, None))
    assert blocks.counts(T + 5_000) == [1, 0, 0]
    blocks.change(0, (T + 1_000, None, None), NO_BLOCKS)
    assert blocks.counts(T + 5_000) == [1, 0, 0]


def test_partitions_count_separately_and_unindexed_partitions_are_ignored():
    blocks = ActiveBlocks()
    blocks.reset(0, T)
    blocks.reset(1, T)
    blocks.change(0, NO_BLOCKS, (INDEFINITE, None, None))
    blocks.change(1, NO_BLOCKS, (INDEFINITE, None, None))
    blocks.change(2, NO_BLOCKS, (INDEFINITE, None, None))  # not indexed: its rebuild will count it
    assert blocks.counts(T) == [2, 0, 0]
    blocks.forget()  # a rebalance
    assert blocks.counts(T) == [0, 0, 0]


def _count_in_force(states: dict[str, CustomerState], now_ms: int) -> list[int]:
    counts = [0] * len(CHANNELS)
    for state in states.values():
        for channel, record in enumerate(state.emitted):
            if record is not None and record[1]["action"] == "block":
                until = record[1]["until_ms"]
                counts[channel] += until is None or until > now_ms
    return counts


def test_the_incremental_count_equals_a_recount_of_the_states_on_a_realistic_stream():
    """The worker's bookkeeping (before/after each step) against a brute-force count over every state."""
    policy = policy_named("default")
    guard = Guard(policy)
    start = T - 2 * DAY
    states: dict[str, CustomerState] = {}
    blocks = ActiveBlocks()
    blocks.reset(0, start)
    for key, raw in generate_messages(20_000, 300, seed=5, start_ms=start, span_days=2):
        event = parse_event(raw, key, check_key=True, max_bytes=policy.max_event_bytes)
        if isinstance(event, Rejection):
            continue
        state = states.get(event.customer_id)
        before = block_untils(state)
        step = guard.process(state, event)
        blocks.change(0, before, block_untils(step.state))
        if step.state is None:
            states.pop(event.customer_id, None)
        else:
            states[event.customer_id] = step.state
    for now in (T, T + 3 * DAY, T + 8 * DAY, T + 40 * DAY):
        expected = _count_in_force(states, now)
        assert blocks.counts(now) == expected
    assert _count_in_force(states, T) != [0, 0, 0]  # the stream did block customers

    rebuilt = ActiveBlocks()  # what a worker that gets the partition assigned computes from the store
    rebuilt.reset(0, T)
    for state in states.values():
        rebuilt.change(0, NO_BLOCKS, block_untils(state))
    assert rebuilt.counts(T) == _count_in_force(states, T)


def test_sender_labels_are_capped():
    metrics = Metrics(max_sender_labels=3)
    labels = [metrics.sender_label(f"sender-{n}") for n in range(10)]
    assert labels[:3] == ["sender-0", "sender-1", "sender-2"]
    assert set(labels[3:]) == {OTHER_SENDER}
    assert metrics.sender_label("sender-1") == "sender-1"  # a known sender keeps its label
    assert metrics.sender_label(None) == UNKNOWN_SENDER


def test_lag_and_state_series_of_partitions_moved_away_disappear():
    metrics = Metrics()
    metrics.set_consumer_lag({("events", 0): 5, ("events", 1): 7})
    metrics.set_state_size({0: 10, 1: 20}, {0: 1000})
    metrics.set_consumer_lag({("events", 1): 2})
    metrics.set_state_size({1: 21}, {})
    text = generate_latest(metrics.registry).decode()
    assert 'fatigue_consumer_lag_messages{partition="1",topic="events"} 2.0' in text
    assert 'partition="0"' not in text
    assert 'fatigue_state_customers{partition="1"} 21.0' in text
    assert "fatigue_state_store_bytes{" not in text


def test_exposition_passes_promtool_lint():
    metrics = Metrics()
    metrics.events.labels(type="contact", channel="email", category="marketing").inc()
    metrics.rejected.labels(reason="bad_json").inc()
    metrics.decisions.labels(action="block", reason="channel_cap", channel="sms").inc()
    metrics.violations.labels(kind="blocked", channel="sms", sender=metrics.sender_label("crm")).inc()
    metrics.latency.observe(0.2)
    metrics.state_bytes.observe(300)
    metrics.set_consumer_lag({("fatigue.events.v1", 0): 3})
    metrics.set_state_size({0: 10}, {0: 4096})
    metrics.policy_info.labels(version="default-2026.11.1").set(1)
    metrics.core_info.labels(flavour="native").set(1)
    metrics.transactions.labels(outcome="committed").inc()
    metrics.transaction_seconds.observe(0.03)
    metrics.restored_records.inc(120)
    result = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=generate_latest(metrics.registry), capture_output=True
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_no_label_can_carry_a_customer_id():
    """Every label name is one with a bounded set of values (customer ids are neither bounded nor anonymous)."""
    metrics = Metrics()
    allowed = {"type", "channel", "category", "reason", "action", "kind", "sender", "clock", "op", "partition"}
    allowed |= {"topic", "version", "flavour", "outcome", "le"}
    declared = {
        label
        for metric in vars(metrics).values()
        if isinstance(metric, MetricWrapperBase)
        for label in metric._labelnames
    }
    assert declared <= allowed - {"le"}
    for family in metrics.registry.collect():
        for sample in family.samples:
            assert set(sample.labels) <= allowed, (family.name, sample.labels)


@pytest.mark.parametrize("engine", ["auto", "python"])
def test_the_worker_exports_its_engine_transaction_outcomes_and_no_faust_series(engine: str, tmp_path: Path):
    """The worker's registry as create_app builds it (nothing connects before start): fatigue_core_info names the
    engine; the transaction outcomes exist at 0 from the start (so increase() sees the first fenced or failed one);
    Faust only hosts the worker, so no faust_* series are exported (they would never move)."""
    settings = settings_from(["--data-dir", str(tmp_path), "--engine", engine], environ={})
    _, pipeline = create_app(settings, policy_named("default"))
    text = generate_latest(pipeline.metrics.registry).decode()
    flavours = [line.split('"')[1] for line in text.splitlines() if line.startswith("fatigue_core_info{flavour=")]
    assert len(flavours) == 1 and flavours[0] in {"native", "python-compiled", "python-pure"}, flavours
    if engine == "python":
        assert flavours[0].startswith("python-")
    for outcome in ("committed", "fenced", "failed"):
        assert f'fatigue_transactions_total{{outcome="{outcome}"}} 0.0' in text
    assert "fatigue_transaction_seconds_count 0.0" in text
    assert "fatigue_restored_records_total 0.0" in text
    assert "faust_" not in text


def test_docs_list_every_series_the_worker_exports_and_no_other():
    """docs/operations.md names each of the worker's series (counters with _total, histograms by family name) and
    no fatigue_* series the worker does not export (such as ones a rewrite removed)."""
    exported = set()
    for family in Metrics().registry.collect():
        if family.name.startswith("fatigue_"):
            exported.add(f"{family.name}_total" if family.type == "counter" else family.name)
    documented = set(re.findall(r"`(fatigue_[a-z0-9_]+)", OPERATIONS_DOC.read_text()))
    assert exported - documented == set(), "exported but not in docs/operations.md"
    assert documented - exported == set(), "in docs/operations.md but not exported"


def test_a_bulk_histogram_exposes_what_a_histogram_of_the_same_values_does():
    """BulkHistogram (observed a transaction at a time) against prometheus_client's own Histogram: the same
    buckets (a value on a bound counts to it: ``le``), +Inf, count and sum."""
    buckets = (64, 128, 256, 512, 1024)
    values = [1, 64, 64.5, 128, 300, 512, 1024, 1025, 99_999, 0, 200.25]
    bulk_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram("sizes", "Sizes", buckets, bulk_registry)
    reference = Histogram("sizes", "Sizes", buckets=buckets, registry=reference_registry)
    bulk.observe_all(values[:4])
    bulk.observe_all([])
    bulk.observe(values[4])
    bulk.observe_all(values[5:])
    for value in values:
        reference.observe(value)

    def samples(registry: CollectorRegistry) -> list[tuple[str, list[tuple[str, str]], float]]:
        return sorted(
            (sample.name, sorted(sample.labels.items()), sample.value)
            for family in registry.collect()
            for sample in family.samples
            if not sample.name.endswith("_created")
        )

    assert samples(bulk_registry) == samples(reference_registry)
    assert bulk_registry.get_sample_value("sizes_bucket", {"le": "64.0"}) == 3  # 0, 1, 64
