"""The live channel of the panel: one WebSocket (``/api/v1/live``) pushing what changes, as it changes.

Pushed: device state/availability (``services.devices.subscribe_changes``), confirmation transitions
(``services.confirmations.subscribe``, which hears only committed transitions, on every instance), and job
runs (read from the durable run history while someone watches: runs may be executed by another instance).
Each client has a bounded queue; a client that cannot keep up is disconnected rather than letting memory
grow. The services appear after the web server starts (plugins start later), so the hub attaches to them
when they show up and re-attaches if a plugin is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from hub.errors import KittError
from hub.plugins import Services
from hub.web.api.models import RunOut
from hub.web.api.views import confirmation_out

log = structlog.get_logger("kitt.web.live")

QUEUE_SIZE = 256
HISTORY_WINDOW = 20


def _json(message: dict[str, Any]) -> str:
    return json.dumps(message, default=str)


class LiveHub:
    def __init__(self, *, services: Services, poll_interval_s: float = 1.0) -> None:
        self._services = services
        self._poll = poll_interval_s
        self._clients: set[asyncio.Queue[str | None]] = set()
        self._attached: dict[str, tuple[Any, Callable[[], Any]]] = {}
        self._runs_seen: dict[int, tuple[Any, ...]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    # --- lifecycle (an aiohttp cleanup context) ------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="kitt[web].live")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for _service, undo in self._attached.values():
            undo()
        self._attached.clear()

    async def close_sockets(self) -> None:
        """On shutdown: tell the browsers we are going away (they reconnect to the next hub)."""
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"hub shutting down")

    @property
    def clients(self) -> int:
        return len(self._clients)

    # --- fan-out -------------------------------------------------------------------------------------

    def broadcast(self, message: dict[str, Any]) -> None:
        text = _json(message)
        for queue in list(self._clients):
            try:
                queue.put_nowait(text)
            except asyncio.QueueFull:
                # Too slow: disconnect it (it reloads its view on reconnect) instead of buffering forever.
                self._clients.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)

    def _on_device(self, name: str, state: Any) -> None:
        self.broadcast({"type": "device", "device": {
            "name": name, "state": dict(state.state), "available": state.available,
            "updated_at": state.updated_at.isoformat() if state.updated_at else None}})

    def _on_confirmation(self, confirmation: Any) -> None:
        out = confirmation_out(confirmation)
        self.broadcast({"type": "confirmation", "confirmation": out.model_dump(mode="json")})

    # --- the background loop: attach to services, watch job runs ---------------------------------------

    def _attach(self) -> None:
        wanted = {
            "devices": ("subscribe_changes", self._on_device),
            "confirmations": ("subscribe", self._on_confirmation),
        }
        for name, (method, callback) in wanted.items():
            service = getattr(self._services, name, None)
            current = self._attached.get(name)
            if current is not None and current[0] is service:
                continue
            if current is not None:
                current[1]()
                del self._attached[name]
            if service is not None:
                self._attached[name] = (service, getattr(service, method)(callback))

    async def _loop(self) -> None:
        while True:
            self._attach()
            if self._clients:
                await self._poll_runs_logged()
            else:
                self._runs_seen = None
            await asyncio.sleep(self._poll)

    async def _poll_runs_logged(self) -> None:
        try:
            await self._poll_runs()
        except (KittError, OSError) as exc:  # the store is down for a moment: say so, keep going
            log.warning("live job-run poll failed", error=str(exc))

    async def _poll_runs(self) -> None:
        jobs = self._services.jobs
        if jobs is None:
            return
        runs = await jobs.history(None, limit=HISTORY_WINDOW)
        seen = {r["id"]: (r.get("status"), r.get("attempts"), r.get("finished_at")) for r in runs}
        previous, self._runs_seen = self._runs_seen, seen
        if previous is None:
            return  # the first look is the baseline: the panel loaded the history itself
        for r in reversed(runs):
            if previous.get(r["id"]) != seen[r["id"]]:
                self.broadcast({"type": "job_run", "run": RunOut.model_validate(r).model_dump(mode="json")})

    # --- one client ----------------------------------------------------------------------------------

    async def serve(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=4096)
        await ws.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._clients.add(queue)
        self._sockets.add(ws)
        self._attach()
        if self._runs_seen is None:
            # Baseline before "hello": the panel reloads on hello, so nothing between the two is lost.
            await self._poll_runs_logged()
        sender = asyncio.create_task(self._send(ws, queue), name="kitt[web].live.send")
        try:
            await ws.send_str(_json({"type": "hello"}))
            async for msg in ws:  # the panel sends nothing we need; reading notices the close
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._clients.discard(queue)
            self._sockets.discard(ws)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        return ws

    @staticmethod
    async def _send(ws: web.WebSocketResponse, queue: asyncio.Queue[str | None]) -> None:
        while True:
            text = await queue.get()
            if text is None:
                await ws.close(code=1013, message=b"too slow; reconnect")
                return
            try:
                await ws.send_str(text)
            except ConnectionResetError:
                return  # the browser went away; the reader side notices and cleans up
