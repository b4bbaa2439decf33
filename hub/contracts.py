"""The typed contracts between the kernel's shared services and the plugins that provide or use them.

Plugins never import each other: a provider puts an object satisfying one of these protocols on
``ctx.services`` (e.g. ``services.devices``), and users call it through the protocol. Value types that
cross those boundaries live here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import asyncpg

# --- who is acting ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who asks or answers. A confirmation is bound to a site+session (voice) or an authenticated user.

    kind: "voice" (site + session_id), "user" (web panel / CLI / HA button: user is set), "agent" (MCP or
    a frontier tool call: may request, never approve), "job" (an autonomous routine: may request only).
    """

    kind: Literal["voice", "user", "agent", "job", "system"]
    site: str | None = None
    session_id: str | None = None
    user: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "voice":
            return f"voice:{self.site}/{self.session_id}"
        return f"{self.kind}:{self.user or self.site or '-'}"


# --- devices -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceAction:
    """One action on one device, adapter-neutral. ``action`` names a capability verb:

    turn_on, turn_off, toggle, set_brightness (params: brightness 0-100), set_temperature (params:
    temperature), open, close, stop, lock, unlock, arm (params: mode), disarm, set_position (params: position).
    """

    device: str
    action: str
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.action} {self.device}" + (f" ({extra})" if extra else "")


@dataclass(frozen=True)
class DeviceInfo:
    name: str           # config key, e.g. "front_door"
    label: str          # spoken name, e.g. "front door"
    kind: str           # light, switch, lock, cover, climate, alarm, appliance, valve, sensor
    area: str
    adapter: str
    capabilities: tuple[str, ...]
    hazards: dict[str, str]  # action -> hazard class, e.g. {"unlock": "lock.unlock"}


@dataclass(frozen=True)
class DeviceState:
    name: str
    state: dict[str, Any]            # normalised: e.g. {"state": "ON", "brightness": 80} / {"lock": "UNLOCKED"}
    available: bool | None           # None: unknown
    updated_at: datetime | None


class DeviceService(Protocol):
    """Provided by ``handlers.devices`` as ``services.devices``."""

    def all(self) -> list[DeviceInfo]: ...

    def get(self, name: str) -> DeviceInfo | None: ...

    def state(self, name: str) -> DeviceState | None: ...

    def hazard_class(self, action: DeviceAction) -> str | None:
        """The hazard class of an action (``lock.unlock`` …), or None when it is not hazardous."""
        ...

    def validate(self, action: DeviceAction) -> str | None:
        """None when the action is possible now; else a reason a person understands ("… is unavailable")."""
        ...

    async def enqueue_command(self, conn: asyncpg.Connection, action: DeviceAction, *, key: str,
                              correlation_id: str | None = None) -> int | None:
        """Write the bridge command for ``action`` to the outbox inside ``conn``'s transaction.

        Never checks hazards: callers do (the confirmation service for hazardous ones). ``key`` is the
        idempotency key (MQTT 5 user property ``id``, and in the JSON payload where the bridge allows).
        Commit it with ``spine.transaction()`` (published from memory right after the commit); with a
        transaction of another kind, call ``spine.notify_outbox()`` after its commit.
        """
        ...

    def reached(self, action: DeviceAction) -> bool | None:
        """Whether the tracked state shows the action's target (True/False), or None when unknown."""
        ...

    async def wait_for(self, action: DeviceAction, timeout: float) -> bool:
        """Wait until the tracked state shows the action's target; False on timeout."""
        ...

    def subscribe_changes(self, callback: Any) -> Any:
        """``callback(name, DeviceState)`` on every state/availability change; returns an undo callable."""
        ...


# --- understanding ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Understanding:
    """What a sentence means. ``intent`` names follow Home Assistant's (HassTurnOn, HassTurnOff, HassLightSet,
    HassClimateSetTemperature, HassOpen (cover), HassClose, HassLock? …) or KITT's own (ConfirmYes, ConfirmNo,
    StateQuery, Unknown). ``actions`` are resolved device actions (empty for questions and unknowns)."""

    text: str
    intent: str
    confidence: float
    slots: dict[str, Any] = field(default_factory=dict)
    actions: tuple[DeviceAction, ...] = ()
    devices: tuple[str, ...] = ()
    source: Literal["template", "embedding", "frontier", "tool", "none"] = "none"


@dataclass(frozen=True)
class Outcome:
    """The result of acting on a request: what to say, what happened."""

    text: str
    route: str                                   # local | state | confirm | frontier | tool | cache | refused | unknown
    intent: str | None = None
    published: int = 0                           # commands written to the outbox
    confirmation_id: str | None = None           # set when a hazard confirmation was opened
    confirmation_prompt: str | None = None
    end_session: bool = True
    data: dict[str, Any] = field(default_factory=dict)


class UnderstandingService(Protocol):
    """Provided by ``handlers.understanding`` as ``services.understanding``."""

    async def understand(self, text: str, *, site: str | None = None,
                         intent_filter: tuple[str, ...] | None = None) -> Understanding: ...

    async def act(self, understanding: Understanding, *, principal: Principal, request_id: str,
                  conn: asyncpg.Connection | None = None) -> Outcome:
        """Carry out a recognised request: answer state questions from tracked state, open a confirmation for
        hazardous actions (``services.confirmations.request``), enqueue commands for the rest, ask the frontier
        for anything else. With ``conn``, outbox rows and events join the caller's transaction."""
        ...

    def acts_locally(self, understanding: Understanding) -> bool:
        """Answered from the house alone (state, device actions): short enough for a grouped spine block."""
        ...

    async def respond(self, understanding: Understanding, *, site: str, user: str | None, request_id: str,
                      actor: str, started: float, conn: asyncpg.Connection | None = None) -> dict[str, Any]:
        """``act`` for a text request (``kitt/<id>/ask``): returns {"text", "route", …}; with ``conn``, inside
        the caller's transaction."""
        ...


# --- confirmations ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Confirmation:
    id: str
    action: DeviceAction
    hazard_class: str
    level: Literal["ack", "pin"]
    state: Literal["pending", "confirmed", "executing", "done", "failed", "cancelled", "expired"]
    prompt: str
    requested_by: Principal
    site: str | None
    session_id: str | None
    created_at: datetime
    expires_at: datetime
    correlation_id: str | None = None


class ConfirmationError(Exception):
    """Why an approval was refused: reason is one of not_found, not_pending, expired, wrong_principal,
    agent_cannot_approve, pin_required, pin_wrong, locked_out, not_allowed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConfirmationService(Protocol):
    """Provided by the kernel as ``services.confirmations`` (hub/confirmations)."""

    async def request(self, action: DeviceAction, *, hazard_class: str, principal: Principal,
                      correlation_id: str | None = None, conn: asyncpg.Connection | None = None) -> Confirmation:
        """Commit a pending confirmation (inside ``conn`` when given). Publishes nothing to the device."""
        ...

    async def approve(self, confirmation_id: str, *, principal: Principal, pin: str | None = None) -> Confirmation:
        """pending → confirmed → executing with the device command in the outbox, in one transaction.
        Raises ConfirmationError. An ``agent`` or ``job`` principal can never approve."""
        ...

    async def cancel(self, confirmation_id: str, *, principal: Principal) -> Confirmation: ...

    async def get(self, confirmation_id: str) -> Confirmation | None: ...

    async def pending(self, *, site: str | None = None) -> list[Confirmation]: ...

    def subscribe(self, callback: Any) -> Any:
        """``callback(Confirmation)`` after every committed transition; returns an undo callable."""
        ...
