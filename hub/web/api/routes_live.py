"""The live channel's route (``GET /api/v1/live``, a WebSocket); the channel itself is ``hub.web.live``."""

from __future__ import annotations

from aiohttp import web

from hub.web.api.errors import ApiError
from hub.web.api.keys import LIVE
from hub.web.api.routing import Call, RouteTable
from hub.web.auth import same_origin

routes = RouteTable(tag="live")


@routes.get("/live", summary="WebSocket: device changes, confirmation transitions and job runs as they happen",
            description='Messages are JSON: {"type": "hello"}, {"type": "device", "device": {…}}, '
                        '{"type": "confirmation", "confirmation": {…}}, {"type": "job_run", "run": {…}}.',
            responses={101: ("switching to the WebSocket protocol", None)}, errors=(403, 426))
async def live(call: Call) -> web.StreamResponse:
    request = call.request
    if not web.WebSocketResponse().can_prepare(request).ok:
        raise ApiError(426, "upgrade_required", "connect with a WebSocket", headers={"Upgrade": "websocket"})
    # Browsers always send Origin on a WebSocket handshake; another site's page must not ride the cookie.
    if not same_origin(request):
        raise ApiError(403, "forbidden_origin", "the WebSocket must be opened by the panel's own page")
    return await request.app[LIVE].serve(request)
