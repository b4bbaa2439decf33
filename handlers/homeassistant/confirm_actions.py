"""Approve / cancel from Home Assistant, and the confirmation event entity.

A press on "Approve (kitchen)" approves *the* pending confirmation of that site: exactly one must be pending,
otherwise nothing is approved and a ``refused`` event says why (approving one of several by guess could open
the wrong door). "Cancel" cancels every pending confirmation of the site: cancelling is never hazardous.
An approval from HA is an authenticated user, ``Principal(kind="user", user="homeassistant")``.

PIN-level hazards: with ``hazards.allow_pin_from_homeassistant`` the PIN comes from the site's ``text``
entity (mode password), and submitting it is the approval; without it, they are refused from HA.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from handlers.homeassistant.discovery import SiteSlot
from hub.contracts import Confirmation, ConfirmationError, Principal

HA_PRINCIPAL = Principal(kind="user", user="homeassistant")

STATE_EVENT: dict[str, str] = {
    "pending": "requested", "confirmed": "approved", "executing": "approved", "done": "done",
    "failed": "failed", "cancelled": "cancelled", "expired": "expired",
}


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


def event_for(c: Confirmation) -> dict[str, Any] | None:
    """The event entity payload for a confirmation in its current state (None for a state with no event)."""
    event_type = STATE_EVENT.get(c.state)
    if event_type is None:
        return None
    return {"event_type": event_type, "confirmation_id": c.id, "device": c.action.device,
            "action": c.action.action, "description": c.action.describe(), "hazard_class": c.hazard_class,
            "level": c.level, "site": c.site, "prompt": c.prompt, "requested_by": c.requested_by.label,
            "expires_at": c.expires_at.isoformat() if isinstance(c.expires_at, datetime) else c.expires_at}


def refusal_event(slot: SiteSlot | None, verb: str, refusal: Refusal) -> dict[str, Any]:
    return {"event_type": "refused", "command": verb, "site": slot.site if slot else None,
            "reason": refusal.reason, "message": refusal.message}


class EventDeduper:
    """Several transitions can map to one event (confirmed, executing → approved): fire it once per id."""

    def __init__(self, size: int = 1024) -> None:
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._size = size

    def first(self, confirmation_id: str, event_type: str) -> bool:
        key = (confirmation_id, event_type)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return True


async def _pending_for(service: Any, slot: SiteSlot) -> list[Confirmation]:
    if slot.site is not None:
        return list(await service.pending(site=slot.site))
    return [c for c in await service.pending() if c.site is None]


class ConfirmActions:
    """The commands behind the buttons and PIN fields. Returns what happened; the plugin publishes it."""

    def __init__(self, *, allow_pin: bool) -> None:
        self._allow_pin = allow_pin

    async def approve(self, service: Any, slot: SiteSlot, pin: str | None = None) -> Confirmation | Refusal:
        if service is None:
            return Refusal("unavailable", "confirmations are not available on the hub right now")
        pending = await _pending_for(service, slot)
        if not pending:
            return Refusal("nothing_pending", f"no confirmation is pending for {slot.label}")
        if len(pending) > 1:
            return Refusal("ambiguous", f"{len(pending)} confirmations are pending for {slot.label}; "
                                        "approve one in the web panel or with `kitt-hub confirm approve ID`")
        target = pending[0]
        if target.level == "pin" and pin is None:
            if not self._allow_pin:
                return Refusal("pin_not_allowed", f"{target.action.describe()} needs the PIN, which Home "
                                                  "Assistant may not send; confirm by voice or in the web panel")
            return Refusal("pin_required", f"{target.action.describe()} needs the PIN: enter it in "
                                           f"PIN ({slot.label})")
        try:
            return await service.approve(target.id, principal=HA_PRINCIPAL, pin=pin)
        except ConfirmationError as exc:
            return Refusal(exc.reason, str(exc))

    async def cancel(self, service: Any, slot: SiteSlot) -> list[Confirmation] | Refusal:
        if service is None:
            return Refusal("unavailable", "confirmations are not available on the hub right now")
        pending = await _pending_for(service, slot)
        if not pending:
            return Refusal("nothing_pending", f"no confirmation is pending for {slot.label}")
        done: list[Confirmation] = []
        refusals: list[ConfirmationError] = []
        for c in pending:
            try:
                done.append(await service.cancel(c.id, principal=HA_PRINCIPAL))
            except ConfirmationError as exc:  # it moved on meanwhile (approved, expired): say so
                refusals.append(exc)
        if not done and refusals:
            return Refusal(refusals[0].reason, str(refusals[0]))
        return done


def slots_by_thing(slots: list[SiteSlot], pin_entities: bool) -> Mapping[str, tuple[str, SiteSlot]]:
    """command thing (``approve_kitchen``) → (verb, slot)."""
    out: dict[str, tuple[str, SiteSlot]] = {}
    for slot in slots:
        out[f"approve_{slot.key}"] = ("approve", slot)
        out[f"cancel_{slot.key}"] = ("cancel", slot)
        if pin_entities:
            out[f"pin_{slot.key}"] = ("pin", slot)
    return out
