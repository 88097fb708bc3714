"""The Faust host: the worker's process, web server (/metrics, /health, /customers/{id}), timers and lifecycle are
Faust's; the guard's pipeline (:mod:`streams.pipeline`) and the Redis view (:mod:`streams.redis_view`) run inside it
as services.

Faust's own consumer, agents and tables are not used (docs/adr/0001): the pipeline talks to Kafka directly and
writes each batch's outputs, state changelog and input offsets in one transaction per input partition. The Faust
app starts no Kafka consumer or producer of its own.

Composition root: :func:`create_app` builds everything from :class:`Settings` (no import-time globals).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any, Literal

import faust
from faust.app.base import BootStrategy
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fatigue import core_flavour
from fatigue.engine import Guard
from fatigue.inspect import explain
from fatigue.partition import CustomerEngine, Loader, PythonEngine
from fatigue.policy import Policy
from fatigue.state import CustomerState
from streams.gauges import refresh_gauges
from streams.metrics import Metrics
from streams.pipeline import EngineFactory, Pipeline
from streams.redis_keys import async_client
from streams.redis_nodes import RedisNodes
from streams.redis_view import RedisView, ViewConsumer, ViewLayout
from streams.settings import Settings
from streams.shutdown_watch import watch_shutdown

log = logging.getLogger("fatigue.worker")
# a graceful stop takes a few seconds (the batch in hand commits); past this its tasks' stacks are logged
_SHUTDOWN_WATCH_S = 20.0


class _HostOnly(BootStrategy):
    """Faust's web server, sensors, timers and services; no Kafka consumer or producer of Faust's own."""

    enable_kafka = False


class GuardApp(faust.App):
    BootStrategy = _HostOnly

    async def on_stop(self) -> None:
        watch_shutdown(asyncio.get_running_loop(), _SHUTDOWN_WATCH_S)
        await super().on_stop()


class _Watched(Service):
    """A service whose one long run must last as long as the worker: if it ends while the worker is not stopping
    (an error mode only logs, a cancellation no one asked for, a return), ``ended`` says how, for ``/health``
    to fail and the orchestrator to restart the worker, instead of a process that serves /metrics and does
    nothing."""

    what = "the service"
    ended: str | None = None

    async def _watch(self, run: Awaitable[None]) -> None:
        how = "returned"
        try:
            await run
        except asyncio.CancelledError:
            how = "cancelled"
            raise
        except BaseException as error:
            how = f"failed: {type(error).__name__}: {error}"
            raise
        finally:
            if not self.should_stop:
                self.ended = f"{self.what} {how}"
                log.error("%s while the worker runs: /health now fails", self.ended)


class PipelineService(_Watched):
    """Runs the pipeline for as long as the worker runs; a stop lets the batch in hand commit first."""

    what = "the pipeline"

    def __init__(self, pipeline: Pipeline, **kwargs: Any) -> None:
        self.pipeline = pipeline
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self.pipeline.start()

    @Service.task
    async def _run(self) -> None:
        # an unexpected error crashes the service (mode's task handling); /health then fails, and the
        # orchestrator's restart sets every partition up again
        await self._watch(self.pipeline.run())

    async def on_stop(self) -> None:
        await self.pipeline.stop()


class ViewService(_Watched):
    what = "the Redis view"

    def __init__(self, views: ViewConsumer, **kwargs: Any) -> None:
        self.views = views
        super().__init__(**kwargs)

    @Service.task
    async def _run(self) -> None:
        await self._watch(self.views.run())

    async def on_stop(self) -> None:
        self.views.stop()  # before mode cancels _run: the run ends even if a client swallows that cancellation


def health(policy: Policy, pipeline: Pipeline, services: Sequence[_Watched]) -> tuple[dict[str, Any], int]:
    """``/health``'s body and status: 503 once the pipeline's or the Redis view's run has ended unasked."""
    ended = [service.ended for service in services if service.ended is not None]
    body: dict[str, Any] = {
        "status": "failing" if ended else "ok",
        "policy_version": policy.version,
        "partitions": pipeline.owned(),
    }
    if ended:
        body["ended"] = ended
    return body, 503 if ended else 200


def engine_factory(settings: Settings, guard: Guard) -> tuple[EngineFactory, str]:
    """The core the pipeline drives (see ``--engine``), and its name for the logs and ``fatigue_core_info``."""
    if settings.engine in ("auto", "native"):
        from fatigue import native as native_core

        NativeEngine = getattr(native_core, "NativeEngine", None)
        if NativeEngine is not None and native_core.native_available():

            def native(loader: Loader) -> CustomerEngine:
                engine: CustomerEngine = NativeEngine(guard, loader)
                return engine

            return native, "native"
        if settings.engine == "native":
            raise SystemExit(f"fatigue worker: --engine native, but {native_core.UNAVAILABLE_REASON}")

    def python(loader: Loader) -> CustomerEngine:
        return PythonEngine(guard, loader)

    return python, f"python-{core_flavour()}"


def create_app(settings: Settings, policy: Policy, metrics: Metrics | None = None) -> tuple[faust.App, Pipeline]:
    """Build the Faust host, the pipeline and the Redis view from settings (the composition root)."""
    metrics = metrics or Metrics(max_sender_labels=settings.sender_label_limit)
    guard = Guard(policy)
    factory, engine_name = engine_factory(settings, guard)
    metrics.policy_info.labels(version=policy.version).set(1)
    metrics.core_info.labels(flavour=engine_name).set(1)
    pipeline = Pipeline(settings, policy, metrics, factory)
    app = GuardApp(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        datadir=settings.data_dir,
        # the pipeline's consumer uses these (see Pipeline.start); kept on the app's configuration for inspection
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        autodiscover=False,
    )
    # a plain client, or redis-py's cluster client for a cluster URL; the view's writes go per master (RedisNodes)
    redis_client = async_client(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    nodes = RedisNodes(redis_client, prefix=settings.redis_prefix, socket_timeout=2.0, socket_connect_timeout=2.0)
    legacy = settings.redis_writes_legacy_keys
    views = ViewConsumer(
        [
            RedisView(
                nodes,
                topic=topic,
                bootstrap=settings.bootstrap,
                partitions=settings.partitions,
                layout=ViewLayout(settings.redis_prefix, kind, legacy),
                metrics=metrics,
            )
            for topic, kind in _viewed_topics(settings)
        ],
        bootstrap=settings.bootstrap,
        group_id=settings.redis_view_group,
        batch=settings.redis_batch,
        wait_replicas=settings.redis_replicas_to_wait_for,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
    pipeline.on_committed = views.write_through
    pipeline_service = PipelineService(pipeline, loop=app.loop, beacon=app.beacon)
    view_service = ViewService(views, loop=app.loop, beacon=app.beacon)
    app.on_startup_finished = None
    _add_services(app, pipeline_service, view_service)

    @app.timer(interval=settings.gauge_interval_s)
    async def gauges() -> None:
        await refresh_gauges(pipeline, views, metrics)

    @app.page("/metrics")
    async def metrics_page(self: Any, request: Any) -> Any:
        return self.bytes(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/customers/{customer_id}/")
    async def customer_page(self: Any, request: Any, customer_id: str) -> Any:
        # answered by the worker that owns the customer's partition, from its committed local state
        partition = pipeline.partition_of(customer_id)
        if partition not in pipeline.owned():
            return self.json(
                {"customer_id": customer_id, "error": "not on this worker", "partition": partition}, status=404
            )
        raw = pipeline.state_bytes(customer_id)
        if raw is None:
            return self.json({"customer_id": customer_id, "error": "unknown customer"}, status=404)
        return self.json(explain(guard, CustomerState.from_bytes(raw), int(time.time() * 1000)))

    @app.page("/health")
    async def health_page(self: Any, request: Any) -> Any:
        body, status = health(policy, pipeline, (pipeline_service, view_service))
        return self.json(body, status=status)

    return app, pipeline


def _viewed_topics(settings: Settings) -> list[tuple[str, Literal["blocks", "prefs"]]]:
    return [(settings.decisions_topic, "blocks"), (settings.prefs_topic, "prefs")]


def _add_services(app: faust.App, *services: Service) -> None:
    """Start ``services`` with the app (after its own), stop them before it."""
    original = app.on_init_dependencies

    def on_init_dependencies() -> Any:
        return [*original(), *services]

    app.on_init_dependencies = on_init_dependencies  # type: ignore[method-assign]
