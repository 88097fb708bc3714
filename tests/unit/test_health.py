"""``/health`` fails once the pipeline's or the Redis view's run has ended while the worker runs (an error mode
only logs, a cancellation no one asked for, a return), so the orchestrator restarts the worker; a stop is not a
failure."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mode import Service

from fatigue.policy import load_policy
from streams.app import _Watched, health


class _Pipeline:
    def owned(self) -> list[int]:
        return [0, 3]


class _Runs(_Watched):
    what = "the test run"

    def __init__(self, run: Any, **kwargs: Any) -> None:
        self.run = run
        super().__init__(**kwargs)

    @Service.task
    async def _run(self) -> None:
        await self._watch(self.run())


async def _fails() -> None:
    await asyncio.sleep(0.01)
    raise RuntimeError("consumer gone")


async def _returns() -> None:
    await asyncio.sleep(0.01)


async def _cancels_itself() -> None:
    await asyncio.sleep(0.01)
    raise asyncio.CancelledError  # what a client's stop let out in the Redis view (7a03033)


async def _runs_until_stopped() -> None:
    await asyncio.sleep(3600)


def _after(run: Any, *, stop: bool) -> _Runs:
    async def scenario() -> _Runs:
        service = _Runs(run)
        await service.start()
        await asyncio.sleep(0.2)
        if stop:
            await service.stop()
        return service

    return asyncio.run(scenario())


POLICY = load_policy("config/policies/default.toml")


@pytest.mark.parametrize(
    ("run", "how"),
    [(_fails, "failed: RuntimeError: consumer gone"), (_returns, "returned"), (_cancels_itself, "cancelled")],
)
def test_a_run_that_ends_while_the_worker_runs_fails_health(run: Any, how: str) -> None:
    service = _after(run, stop=False)
    assert service.ended == f"the test run {how}"
    body, status = health(POLICY, _Pipeline(), [service])  # type: ignore[arg-type]
    assert status == 503
    assert body == {
        "status": "failing",
        "policy_version": POLICY.version,
        "partitions": [0, 3],
        "ended": [f"the test run {how}"],
    }


def test_a_running_or_stopped_service_is_healthy() -> None:
    stopped = _after(_runs_until_stopped, stop=True)
    assert stopped.ended is None
    body, status = health(POLICY, _Pipeline(), [stopped])  # type: ignore[arg-type]
    assert (status, body["status"], "ended" in body) == (200, "ok", False)
