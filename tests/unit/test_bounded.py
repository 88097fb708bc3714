"""streams.bounded.within: a shutdown step that ignores its cancellation cannot hold the caller up."""

import asyncio

import pytest

from streams.bounded import within


async def _swallows_cancellation(stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            continue  # what a client stuck in its own retry loop does


def test_returns_at_the_timeout_even_when_the_awaitable_ignores_its_cancellation() -> None:
    async def scenario() -> tuple[bool, bool]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        started = loop.time()
        finished = await within(_swallows_cancellation(stop), 0.2)
        elapsed = loop.time() - started
        stop.set()  # let it end, so the loop closes cleanly
        await asyncio.sleep(0)
        # asyncio.wait_for would still be waiting here: it waits for the cancelled awaitable to finish
        return finished, elapsed < 2.0

    assert asyncio.run(scenario()) == (False, True)


def test_true_when_it_finishes_and_its_exception_is_raised() -> None:
    async def fails() -> None:
        raise ValueError("broken")

    async def scenario() -> bool:
        finished = await within(asyncio.sleep(0.01), 5)
        with pytest.raises(ValueError, match="broken"):
            await within(fails(), 5)
        return finished

    assert asyncio.run(scenario()) is True


def test_cancelling_the_caller_cancels_the_awaitable() -> None:
    async def scenario() -> bool:
        inner = asyncio.ensure_future(asyncio.sleep(3600))
        outer = asyncio.ensure_future(within(inner, 60))
        await asyncio.sleep(0.01)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        await asyncio.sleep(0)
        return inner.cancelled()

    assert asyncio.run(scenario()) is True


def test_an_awaitable_that_cancels_itself_is_not_the_callers_cancellation() -> None:
    """A client whose internal task was cancelled lets CancelledError out of its stop(); the caller was not
    cancelled, so within() says "did not finish" instead of ending the caller as if it had been."""

    async def cancels_itself() -> None:
        inner = asyncio.ensure_future(asyncio.sleep(3600))
        inner.cancel()
        await inner  # raises CancelledError out of this coroutine

    async def scenario() -> bool:
        return await within(cancels_itself(), 5)

    assert asyncio.run(scenario()) is False
