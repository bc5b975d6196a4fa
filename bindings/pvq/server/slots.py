"""The server's N slots: N pvq.Llama contexts over one loaded model (Llama.share), handed to requests one at a
time. A request that finds every slot busy waits in a first-come first-served queue of bounded length; one
more gets QueueFull (HTTP 503). All of it runs on the event loop's thread, so no lock is needed."""
from __future__ import annotations

import asyncio
from collections import deque
from contextlib import asynccontextmanager


class QueueFull(Exception):
    pass


class Slots:
    def __init__(self, llamas, max_queue: int):
        self.all = list(llamas)
        self.idle = list(self.all)
        self.max_queue = max_queue
        self.waiting: deque[asyncio.Future] = deque()

    @asynccontextmanager
    async def hold(self):
        """A slot's Llama for the body of the with-statement; raises QueueFull at once when the queue is full.
        A waiter that is cancelled (its client left) leaves the queue, and a slot handed to it is passed on."""
        if self.idle:
            llm = self.idle.pop()
        elif len(self.waiting) >= self.max_queue:
            raise QueueFull
        else:
            waiter = asyncio.get_running_loop().create_future()
            self.waiting.append(waiter)
            try:
                llm = await waiter
            except asyncio.CancelledError:
                if waiter.cancelled():
                    self.waiting.remove(waiter)
                else:  # the slot came just as the client left
                    self._give_back(waiter.result())
                raise
        try:
            yield llm
        finally:
            self._give_back(llm)

    def _give_back(self, llm) -> None:
        if self.waiting:
            self.waiting.popleft().set_result(llm)
        else:
            self.idle.append(llm)
