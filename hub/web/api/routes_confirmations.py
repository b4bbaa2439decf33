"""Hazard confirmations: list, one, approve (with the PIN where the level is pin), cancel.

The panel's user is ``Principal(kind="user", user="web")``: the confirmation service lets a person approve
any pending request, checks the PIN, and writes the device command in the same transaction as
``confirmed → executing`` (exactly once).
"""

from __future__ import annotations

from hub.contracts import ConfirmationError
from hub.web.api.errors import ApiError, require
from hub.web.api.models import ApproveBody, ConfirmationOut, ConfirmationPath, ConfirmationsOut, ConfirmationsQuery
from hub.web.api.routes_devices import WEB_PRINCIPAL
from hub.web.api.routing import Call, Reply, RouteTable
from hub.web.api.views import confirmation_out, confirmation_row_out

routes = RouteTable(tag="confirmations")

# ConfirmationError.reason → HTTP status: state conflicts 409, refusals 403, PIN lockout 423.
REFUSAL_STATUS = {
    "not_found": 404,
    "not_pending": 409,
    "expired": 409,
    "wrong_principal": 403,
    "agent_cannot_approve": 403,
    "not_allowed": 403,
    "pin_required": 403,
    "pin_wrong": 403,
    "locked_out": 423,
}


def refused(exc: ConfirmationError) -> ApiError:
    return ApiError(REFUSAL_STATUS.get(exc.reason, 409), exc.reason, str(exc))


@routes.get("/confirmations", summary="Confirmations: pending ones, or the most recent in any state",
            query=ConfirmationsQuery, responses={200: ("the confirmations", ConfirmationsOut)}, errors=(503,))
async def list_confirmations(call: Call) -> Reply:
    service = require(call.deps.services, "confirmations")
    q: ConfirmationsQuery = call.query
    if q.state == "pending" or not hasattr(service, "recent"):
        items = [confirmation_out(c) for c in await service.pending()][: q.limit]
    else:
        items = [confirmation_row_out(r) for r in await service.recent(limit=q.limit)]
        if q.state is not None:
            items = [c for c in items if c.state == q.state]
    return Reply(ConfirmationsOut(confirmations=items))


@routes.get("/confirmations/{id}", summary="One confirmation", path_model=ConfirmationPath,
            responses={200: ("the confirmation", ConfirmationOut)}, errors=(404, 503))
async def get_confirmation(call: Call) -> Reply:
    service = require(call.deps.services, "confirmations")
    confirmation = await service.get(call.path.id)
    if confirmation is None:
        raise ApiError(404, "not_found", f"no confirmation {call.path.id!r}")
    return Reply(confirmation_out(confirmation))


@routes.post("/confirmations/{id}/approve", summary="Approve a pending confirmation (executes it once)",
             path_model=ConfirmationPath, body=ApproveBody, body_optional=True,
             responses={200: ("approved; the command is on its way (state executing)", ConfirmationOut)},
             errors=(403, 404, 409, 423, 503))
async def approve_confirmation(call: Call) -> Reply:
    service = require(call.deps.services, "confirmations")
    body: ApproveBody = call.body
    try:
        confirmation = await service.approve(call.path.id, principal=WEB_PRINCIPAL, pin=body.pin)
    except ConfirmationError as exc:
        raise refused(exc) from exc
    return Reply(confirmation_out(confirmation))


@routes.post("/confirmations/{id}/cancel", summary="Cancel a pending confirmation", path_model=ConfirmationPath,
             responses={200: ("cancelled", ConfirmationOut)}, errors=(403, 404, 409, 503))
async def cancel_confirmation(call: Call) -> Reply:
    service = require(call.deps.services, "confirmations")
    try:
        confirmation = await service.cancel(call.path.id, principal=WEB_PRINCIPAL)
    except ConfirmationError as exc:
        raise refused(exc) from exc
    return Reply(confirmation_out(confirmation))
