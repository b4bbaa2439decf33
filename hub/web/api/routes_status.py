"""The one-screen status (what ``kitt-hub status`` prints) and who the caller is (the panel's CSRF token)."""

from __future__ import annotations

from hub.web.api.errors import ApiError
from hub.web.api.models import SessionOut, StatusOut
from hub.web.api.routing import Call, Reply, RouteTable

routes = RouteTable(tag="status")


@routes.get("/status", summary="Spine, store, cache, vectors, jobs, pending confirmations",
            responses={200: ("the status", StatusOut)})
async def status(call: Call) -> Reply:
    deps = call.deps
    if deps.status is not None:
        return Reply(StatusOut.model_validate(await deps.status()))
    ready, checks = await deps.readiness.evaluate()
    return Reply(StatusOut(hub_id=deps.config.hub.id, ready=ready,
                           checks={c.name: {"ok": c.ok, "reason": c.reason} for c in checks}))


@routes.get("/session", summary="Who is calling, and the CSRF token for cookie-authenticated changes",
            responses={200: ("the caller", SessionOut)})
async def session(call: Call) -> Reply:
    identity = call.identity
    if identity is None:  # the auth middleware runs first; this is a guard, not a path
        raise ApiError(401, "unauthorized", "log in or send the token")
    csrf = identity.session.csrf if identity.session is not None else None
    return Reply(SessionOut(user=identity.user, via=identity.via, csrf=csrf))  # type: ignore[arg-type]
