"""The audit trail, newest first, paged by id (``before_id``) and filtered by kind, subject or correlation."""

from __future__ import annotations

from hub.web.api.errors import ApiError
from hub.web.api.models import AuditOut, AuditQuery, EventOut
from hub.web.api.routing import Call, Reply, RouteTable

routes = RouteTable(tag="audit")


@routes.get("/audit", summary="Audit events, newest first", query=AuditQuery,
            responses={200: ("a page of events", AuditOut)}, errors=(503,))
async def audit(call: Call) -> Reply:
    store = call.deps.store
    if store is None:
        raise ApiError(503, "service_unavailable", "the store is not running yet")
    q: AuditQuery = call.query
    rows = await store.events(limit=q.limit, before_id=q.before_id, kind=q.kind, subject=q.subject,
                              correlation_id=q.correlation_id)
    events = [EventOut.model_validate(r) for r in rows]
    # A full page may have more behind it; a short page is the end.
    next_before = events[-1].id if len(events) == q.limit else None
    return Reply(AuditOut(events=events, next_before_id=next_before))
