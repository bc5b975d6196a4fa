"""One completion request as an ASGI response: it waits for a slot, runs the request's generation in a worker
thread and answers with JSON, or with server-sent events for stream=true, then frees the slot. Everything
that holds the slot lives in this one coroutine, so a slot is freed however the request ends, and a client
that disconnects (while queued or mid-stream) cancels it: a stream stops after the token in progress."""
from __future__ import annotations

import json

import anyio
import anyio.to_thread

from .errors import ApiError, send_json
from .slots import QueueFull

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]
RETRY_AFTER_S = 1


def _event(data: str) -> dict:
    return {"type": "http.response.body", "body": f"data: {data}\n\n".encode("utf-8"), "more_body": True}


class Generation:
    """run(llm) is called in a worker thread with the slot's Llama; it returns the response dict, or with
    stream the iterator of chunk dicts, and raises ApiError for a request the model cannot serve."""

    def __init__(self, slots, run, stream: bool):
        self.slots, self.run, self.stream = slots, run, stream

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._watch, receive, tasks.cancel_scope)
            try:
                await self._answer(send)
            finally:
                tasks.cancel_scope.cancel()

    @staticmethod
    async def _watch(receive, scope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def _answer(self, send) -> None:
        try:
            async with self.slots.hold() as llm:
                try:
                    result = await anyio.to_thread.run_sync(self.run, llm)
                except ApiError as e:
                    return await e.send(send)
                if not self.stream:
                    return await send_json(send, 200, result)
                await self._send_stream(send, result)
        except QueueFull:
            await ApiError(503, f"all {len(self.slots.all)} slots are busy and {self.slots.max_queue} requests are "
                                f"waiting; retry later", type="server_error", code="server_busy",
                           headers={"Retry-After": RETRY_AFTER_S}).send(send)

    @staticmethod
    async def _send_stream(send, chunks) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        try:
            while (chunk := await anyio.to_thread.run_sync(next, chunks, None)) is not None:
                await send(_event(json.dumps(chunk, ensure_ascii=False)))
        except ApiError as e:  # the headers are out: the error becomes the last event, as OpenAI sends it
            await send(_event(json.dumps(e.body())))
        finally:
            chunks.close()  # on the loop's thread: the worker has returned (run_sync waits for it)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
