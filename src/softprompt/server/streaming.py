"""A job's per-token events as an async iterator: the engine's thread hands them to the event loop as they come.

The job is submitted when the stream is made, so overload and other refusals still become a
proper status code before any byte of a 200 is sent. Closing the stream (the client went away,
Starlette cancels the response) cancels the job, which the engine then drops between steps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .engine import Engine
from .work import Job, TokenEvent


class EventStream:
    def __init__(self, engine: Engine, job: Job):
        loop = asyncio.get_running_loop()
        self.job, self.events = job, asyncio.Queue()
        job.sink = lambda event: loop.call_soon_threadsafe(self.events.put_nowait, event)
        self.waiter = asyncio.wrap_future(engine.submit(job))

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        """Every event, then stops once the job has its result (events are queued before the result is)."""
        while True:
            if not self.events.empty():
                yield self.events.get_nowait()
                continue
            if self.waiter.done():
                return
            getter = asyncio.ensure_future(self.events.get())
            await asyncio.wait({getter, self.waiter}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()

    def results(self):
        return self.waiter.result()  # raises the job's typed error

    def close(self) -> None:
        if not self.waiter.done():
            self.job.cancel()
