"""Turning service objects (dataclasses, database rows) into response models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hub.contracts import Confirmation
from hub.web.api.models import ConfirmationOut


def confirmation_out(c: Confirmation) -> ConfirmationOut:
    return ConfirmationOut(
        id=c.id, state=c.state, device=c.action.device, action=c.action.action, params=dict(c.action.params),
        hazard_class=c.hazard_class, level=c.level, prompt=c.prompt, requested_by=c.requested_by.label,
        site=c.site, created_at=c.created_at, expires_at=c.expires_at, correlation_id=c.correlation_id,
    )


def confirmation_row_out(row: Mapping[str, Any]) -> ConfirmationOut:
    """A row of ``ConfirmationService.recent()`` (it carries the decision and the outcome too)."""
    action = row.get("action") or {}
    kind = row.get("principal_kind") or "system"
    if kind == "voice":
        requested_by = f"voice:{row.get('site')}/{row.get('session_id')}"
    else:
        requested_by = f"{kind}:{row.get('requested_user') or row.get('site') or '-'}"
    return ConfirmationOut(
        id=row["id"], state=row["state"], device=row.get("device") or action.get("device", ""),
        action=action.get("action", ""), params=dict(action.get("params") or {}),
        hazard_class=row["hazard_class"], level=row["level"], prompt=row["prompt"], requested_by=requested_by,
        site=row.get("site"), created_at=row["created_at"], expires_at=row["expires_at"],
        correlation_id=row.get("correlation_id"), decided_by=row.get("decided_by"),
        decided_at=row.get("decided_at"), finished_at=row.get("finished_at"), error=row.get("error"),
    )
