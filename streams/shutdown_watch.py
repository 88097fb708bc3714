"""Where a worker's shutdown hangs: if it has not ended some time after it began, every asyncio task's stack goes to
the log (a hung stop shows only an idle event loop to a thread dump; the stuck coroutine is in a task's stack)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import time

log = logging.getLogger("fatigue.worker")


def watch_shutdown(loop: asyncio.AbstractEventLoop, after_s: float) -> None:
    """Log the tasks' stacks once, ``after_s`` from now, if the process is still running by then."""

    def wait_then_dump() -> None:
        time.sleep(after_s)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the shutdown is done
            loop.call_soon_threadsafe(_log_tasks, after_s)

    threading.Thread(target=wait_then_dump, name="shutdown-watch", daemon=True).start()


def _log_tasks(after_s: float) -> None:
    tasks = asyncio.all_tasks()
    dump = io.StringIO()
    for task in sorted(tasks, key=lambda task: task.get_name()):
        task.print_stack(limit=12, file=dump)
    log.warning("shutdown still running after %.0fs; its %d tasks:\n%s", after_s, len(tasks), dump.getvalue())
