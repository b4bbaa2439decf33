"""Request and response models of ``/api/v1``: validation, serialisation and the OpenAPI schemas in one place.

Requests are strict (unknown fields are errors, strings have a shape and a length); responses allow extra
fields where the underlying service may grow (jobs, goals, status).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints

# Names of devices and jobs, ids of confirmations: what config keys and ids look like, nothing else.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
# Free text in filters and bodies: no control characters (PostgreSQL refuses NUL), bounded.
Text = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
LongText = Annotated[str, StringConstraints(max_length=2000, pattern=r"^[^\x00\x7f]*$")]
Scalar = Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")] | int | float | bool

CONFIRMATION_STATES = ("pending", "confirmed", "executing", "done", "failed", "cancelled", "expired")
ConfirmationState = Literal["pending", "confirmed", "executing", "done", "failed", "cancelled", "expired"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorOut(Strict):
    error: str = Field(description="a short, stable code, e.g. not_found, invalid_body, unauthorized")
    detail: Any = Field(default=None, description="what was wrong: text, or a list of {field, problem}")


# --- status and session ----------------------------------------------------------------------------------


class StatusOut(Open):
    hub_id: str
    ready: bool
    uptime_s: float | None = None
    checks: dict[str, Any] = Field(default_factory=dict)
    spine: Any = None
    plugins: Any = None


class SessionOut(Strict):
    user: str
    via: Literal["bearer", "session"]
    csrf: str | None = Field(default=None, description="send as X-CSRF-Token on changes made with the cookie")


# --- devices ---------------------------------------------------------------------------------------------


class DevicePath(Strict):
    name: Name


class DeviceOut(Strict):
    name: str
    label: str
    kind: str
    area: str
    adapter: str
    capabilities: list[str]
    hazards: dict[str, str] = Field(description="action → hazard class; these need a confirmation")
    state: dict[str, Any]
    available: bool | None
    updated_at: datetime | None


class DevicesOut(Strict):
    devices: list[DeviceOut]


class ActionBody(Strict):
    action: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z_]{0,31}$")] = Field(
        description="a capability verb: turn_on, turn_off, toggle, set_brightness, lock, unlock, open, …")
    params: dict[Annotated[str, StringConstraints(pattern=r"^[a-z][a-z_]{0,31}$")], Scalar] = Field(
        default_factory=dict, max_length=16)


class CommandOut(Strict):
    status: Literal["queued"]
    device: str
    action: str
    key: str = Field(description="the command's idempotency key")
    outbox_id: int | None


# --- confirmations ---------------------------------------------------------------------------------------


class ConfirmationPath(Strict):
    id: Ident


class ConfirmationsQuery(Strict):
    state: ConfirmationState | None = None
    limit: int = Field(default=50, ge=1, le=500)


class ConfirmationOut(Strict):
    id: str
    state: ConfirmationState
    device: str
    action: str
    params: dict[str, Any]
    hazard_class: str
    level: Literal["ack", "pin"]
    prompt: str
    requested_by: str
    site: str | None
    created_at: datetime
    expires_at: datetime
    correlation_id: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


class ConfirmationsOut(Strict):
    confirmations: list[ConfirmationOut]


class ApproveBody(Strict):
    pin: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")] | None = (
        Field(default=None, description="required where the confirmation's level is pin"))


# --- jobs and goals --------------------------------------------------------------------------------------


class JobPath(Strict):
    name: Name


class JobOut(Open):
    name: str
    expr: str | None = None
    enabled: bool | None = None
    next_run_at: datetime | None = None
    last_status: str | None = None
    last_success_at: datetime | None = None


class JobsOut(Strict):
    jobs: list[JobOut]


class RunQueuedOut(Strict):
    job: str
    run_id: int


class HistoryQuery(Strict):
    name: Name | None = None
    limit: int = Field(default=50, ge=1, le=1000)


class RunOut(Open):
    id: int
    job: str
    status: str
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    attempts: int | None = None
    last_error: str | None = None


class HistoryOut(Strict):
    runs: list[RunOut]


class GoalsQuery(Strict):
    status: Text | None = None


class GoalBody(Strict):
    title: Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")]
    description: LongText = ""
    template: Name = "default"
    target: float = Field(default=1.0, gt=0, le=1, description="share of the tasks that must succeed")


class GoalOut(Open):
    id: int
    title: str
    status: str
    template: str | None = None
    target: float | None = None
    progress: float | None = None
    created_at: datetime | None = None


class GoalsOut(Strict):
    goals: list[GoalOut]


# --- cache -----------------------------------------------------------------------------------------------


class CacheStatsOut(Open):
    entries: int | None
    hits: int
    misses: int
    hit_ratio: float
    evictions: int
    degraded: bool = False


class ByKey(Strict):
    key: Text


class ByTag(Strict):
    tag: Text


class ByAll(Strict):
    all: Literal[True]


class InvalidateBody(RootModel[ByKey | ByTag | ByAll]):
    """Exactly one of ``{"key": text}``, ``{"tag": tag}`` or ``{"all": true}``."""


class InvalidateOut(Strict):
    scope: Literal["key", "tag", "all"]
    removed: int


# --- audit -----------------------------------------------------------------------------------------------


class AuditQuery(Strict):
    limit: int = Field(default=50, ge=1, le=500)
    before_id: int | None = Field(default=None, ge=1, le=2**63 - 1, description="page: events older than this id")
    kind: Text | None = None
    subject: Text | None = None
    correlation_id: Text | None = None


class EventOut(Strict):
    id: int
    at: datetime
    actor: str
    kind: str
    subject: str | None
    correlation_id: str | None
    body: dict[str, Any]


class AuditOut(Strict):
    events: list[EventOut]
    next_before_id: int | None = Field(description="pass as before_id for the next (older) page; null at the end")
