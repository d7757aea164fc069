"""Large torch ops outside the sampling worker, on a thread that exits with them.

On CPU the worker thread must be the only long-lived thread that runs large torch ops (see
:mod:`app.runtime.worker`), so request handlers and the lifespan run theirs through :func:`on_a_thread_that_exits`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

R = TypeVar("R")


async def on_a_thread_that_exits(fn: Callable[[], R]) -> R:
    """``fn()`` off the event loop, on a thread that ends with it.

    A long-lived thread (the loop's, or a pool's) that ran large torch ops would keep an OpenMP team of
    its own for as long as it lives, and slow the worker's.
    """
    pool = ThreadPoolExecutor(1, thread_name_prefix="off-worker")
    try:
        # Shielded: a cancelled caller must not cancel fn before it starts, since fn may own a release.
        return await asyncio.shield(asyncio.get_running_loop().run_in_executor(pool, fn))
    finally:
        pool.shutdown(wait=False)
