"""streams.shutdown_watch: a shutdown still running after the delay logs where each task is waiting."""

import asyncio
import logging
import time

import pytest

from streams.shutdown_watch import watch_shutdown


async def _stuck_in_a_client_stop() -> None:
    await asyncio.sleep(3600)


def test_logs_every_tasks_stack_once_the_delay_has_passed(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        stuck = asyncio.create_task(_stuck_in_a_client_stop(), name="view-consumer")
        watch_shutdown(asyncio.get_running_loop(), 0.05)
        for _ in range(100):  # the dump arrives from the watch thread through the loop
            await asyncio.sleep(0.02)
            if "shutdown still running" in caplog.text:
                break
        stuck.cancel()

    with caplog.at_level(logging.WARNING, logger="fatigue.worker"):
        asyncio.run(scenario())
    assert "shutdown still running after 0s" in caplog.text
    assert "_stuck_in_a_client_stop" in caplog.text  # the waiting coroutine's frame, not just the event loop


def test_nothing_is_logged_when_the_process_is_done_before_the_delay(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        watch_shutdown(asyncio.get_running_loop(), 0.3)

    with caplog.at_level(logging.WARNING, logger="fatigue.worker"):
        asyncio.run(scenario())  # the loop is closed when the watch wakes up
        time.sleep(0.5)
    assert "shutdown still running" not in caplog.text
