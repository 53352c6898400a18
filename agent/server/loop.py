"""The end of a server thread's event loop."""

from __future__ import annotations

import asyncio


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what still runs on the stopped loop and let it unwind, then close the loop: a task left
    pending (a connection's event consumer) would otherwise be torn down by the garbage collector on a
    closed loop, with a "Event loop is closed" traceback on stderr."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()
