"""Operational gauges read on a timer, not per event: consumer lag, state size, active blocks, assignment."""

from __future__ import annotations

import asyncio
import logging
import time

from streams.metrics import Metrics
from streams.pipeline import Pipeline
from streams.redis_view import ViewConsumer

log = logging.getLogger("fatigue.gauges")


async def refresh_gauges(pipeline: Pipeline, views: ViewConsumer, metrics: Metrics) -> None:
    metrics.refreshes.inc()
    pipeline.active_blocks.publish(metrics.active_blocks, int(time.time() * 1000))
    owned = pipeline.owned()
    events = pipeline.topics.events
    metrics.assigned_partitions.labels(topic=events).set(len(owned))
    lags = pipeline.lags()
    pipeline.warn_stalled(lags, time.monotonic())
    for topic in views.views:
        metrics.assigned_partitions.labels(topic=topic).set(len(views.owned_partitions(topic)))
    try:
        lags.update(await asyncio.wait_for(views.lags(), timeout=5.0))
    except Exception as error:  # the view's consumer is restarting: its lag shows again next time
        log.debug("redis view lag unavailable: %s", error)
    metrics.set_consumer_lag(lags)
    customers: dict[int, int] = {}
    sizes: dict[int, int] = {}
    for partition in owned:
        store = pipeline.stores.get(partition)
        if store is not None:
            customers[partition] = store.estimated_customers()
            sizes[partition] = store.size_bytes()
    metrics.set_state_size(customers, sizes)
