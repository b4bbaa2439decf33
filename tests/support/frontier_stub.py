"""A small OpenAI-compatible chat-completions server on loopback: the only fake in the test suite.

``async with FrontierStub() as stub:`` then point ``[frontier] base_url`` at ``stub.base_url``. By default it
answers with text (``"Stub answer: <question>"``); ``reply_with_tool(...)`` queues a tool call,
``fail(n, status)`` makes the next n calls fail, ``hang`` makes calls wait forever (for timeouts).
Every request body is kept in ``requests``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from typing import Any

from aiohttp import web


class FrontierStub:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._queue: deque[dict[str, Any]] = deque()
        self._failures: deque[int] = deque()
        self.hang = False
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> FrontierStub:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def reply_with_text(self, text: str) -> None:
        self._queue.append({"role": "assistant", "content": text})

    def reply_with_tool(self, name: str, **arguments: Any) -> None:
        self._queue.append({"role": "assistant", "content": None, "tool_calls": [{
            "id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}]})

    def fail(self, times: int = 1, status: int = 500) -> None:
        self._failures.extend([status] * times)

    async def _completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if self.hang:
            await self._release.wait()  # released on exit so the server can shut down
        if self._failures:
            return web.json_response({"error": {"message": "stub failure"}}, status=self._failures.popleft())
        if self._queue:
            message = self._queue.popleft()
        else:
            question = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
            message = {"role": "assistant", "content": f"Stub answer: {question}"}
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:8]}", "object": "chat.completion", "model": body.get("model", "stub"),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })
