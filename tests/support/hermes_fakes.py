"""In-memory collaborators for driving the dialogue manager in unit tests (no broker, no database).

``FakeConfirmations`` keeps the real binding rule (voice answers only from the bound site + session) and the
state machine, so the dialogue manager's use of it is tested against the contract, not against a stub that
says yes to everything.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from handlers.voice.durable import OpenSession
from handlers.voice.manager import DialogueManager, VoiceDeps
from hub.config import VoiceSection
from hub.contracts import Confirmation, ConfirmationError, DeviceAction, Outcome, Principal, Understanding

# A few sentences are enough to steer the dialogue manager; the real recogniser is tested elsewhere.
SENTENCES: dict[str, tuple[str, dict[str, Any], tuple[DeviceAction, ...]]] = {
    "turn on the kitchen light": ("HassTurnOn", {"name": "kitchen_light"},
                                  (DeviceAction("kitchen_light", "turn_on"),)),
    "turn off the light": ("HassTurnOff", {"area": "kitchen"}, (DeviceAction("kitchen_light", "turn_off"),)),
    "unlock the front door": ("HassTurnOff", {"name": "front_door"}, (DeviceAction("front_door", "unlock"),)),
    "disarm the alarm": ("KittAlarmDisarm", {"name": "alarm"}, (DeviceAction("alarm", "disarm"),)),
    "yes": ("ConfirmYes", {}, ()),
    "no": ("ConfirmNo", {}, ()),
}
HAZARDS = {("front_door", "unlock"): ("lock.unlock", "ack"), ("alarm", "disarm"): ("alarm.disarm", "pin")}


class FakeUnderstanding:
    def __init__(self, confirmations: FakeConfirmations) -> None:
        self.confirmations = confirmations
        self.acted: list[tuple[Understanding, Principal, str]] = []

    async def understand(self, text: str, *, site: str | None = None,
                         intent_filter: tuple[str, ...] | None = None) -> Understanding:
        intent, slots, actions = SENTENCES.get(text.strip().lower(), ("Unknown", {}, ()))
        if intent_filter is not None and intent not in intent_filter:
            return Understanding(text=text, intent="Unknown", confidence=0.0)
        return Understanding(text=text, intent=intent, confidence=1.0, slots=slots, actions=actions,
                             source="template")

    async def act(self, understanding: Understanding, *, principal: Principal, request_id: str,
                  conn: Any = None) -> Outcome:
        self.acted.append((understanding, principal, request_id))
        action = understanding.actions[0]
        if (hazard := HAZARDS.get((action.device, action.action))) is not None:
            c = await self.confirmations.request(action, hazard_class=hazard[0], principal=principal,
                                                 level=hazard[1])
            return Outcome(text=c.prompt, route="confirm", intent=understanding.intent, confirmation_id=c.id,
                           confirmation_prompt=c.prompt, end_session=False)
        return Outcome(text="Done.", route="local", intent=understanding.intent, published=1)


class FakeConfirmations:
    def __init__(self, pin: str = "1234") -> None:
        self.rows: dict[str, Confirmation] = {}
        self.approved: list[tuple[str, Principal]] = []
        self.calls: list[tuple[str, str]] = []
        self._pin = pin

    async def request(self, action: DeviceAction, *, hazard_class: str, principal: Principal,
                      level: str = "ack", **_: Any) -> Confirmation:
        now = datetime.now(UTC)
        cid = uuid.uuid4().hex[:16]
        c = Confirmation(id=cid, action=action, hazard_class=hazard_class, level=level,  # type: ignore[arg-type]
                         state="pending", prompt=f"Are you sure you want to {action.action} the "
                         f"{action.device.replace('_', ' ')}?", requested_by=principal, site=principal.site,
                         session_id=principal.session_id, created_at=now, expires_at=now + timedelta(seconds=60))
        self.rows[cid] = c
        return c

    def _check(self, cid: str, principal: Principal) -> Confirmation:
        c = self.rows.get(cid)
        if c is None:
            raise ConfirmationError("not_found", "no such confirmation")
        if c.state != "pending":
            raise ConfirmationError("not_pending", c.state)
        if principal.kind == "voice" and (principal.site, principal.session_id) != (c.site, c.session_id):
            raise ConfirmationError("wrong_principal", "not bound")
        return c

    async def approve(self, cid: str, *, principal: Principal, pin: str | None = None) -> Confirmation:
        self.calls.append(("approve", cid))
        c = self._check(cid, principal)
        if c.level == "pin" and pin != self._pin:
            raise ConfirmationError("pin_wrong", "wrong PIN")
        self.approved.append((cid, principal))
        self.rows[cid] = replace(c, state="executing")
        return self.rows[cid]

    async def cancel(self, cid: str, *, principal: Principal) -> Confirmation:
        self.calls.append(("cancel", cid))
        c = self._check(cid, principal)
        self.rows[cid] = replace(c, state="cancelled")
        return self.rows[cid]

    async def expire(self, cid: str, *, reason: str = "timeout") -> bool:
        self.calls.append(("expire", cid))
        c = self.rows.get(cid)
        if c is None or c.state != "pending":
            return False
        self.rows[cid] = replace(c, state="expired")
        return True

    async def get(self, cid: str) -> Confirmation | None:
        return self.rows.get(cid)

    def finish(self, cid: str, state: str) -> Confirmation:
        self.rows[cid] = replace(self.rows[cid], state=state)  # type: ignore[arg-type]
        return self.rows[cid]


class FakeRows:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}

    async def open(self, conn: Any, *, site: str, session_id: str, confirmation_id: str, custom_data: str | None,
                   lang: str | None) -> None:
        self.rows[(site, session_id)] = {"confirmation_id": confirmation_id, "custom_data": custom_data,
                                         "state": "open", "deadline": False}

    async def arm_deadline(self, site: str, session_id: str, seconds: float) -> None:
        self.rows[(site, session_id)]["armed"] = seconds

    async def close(self, site: str, session_id: str, reason: str) -> None:
        if (site, session_id) in self.rows:
            self.rows[(site, session_id)]["state"] = "ended"

    async def open_sessions(self) -> list[OpenSession]:
        return [OpenSession(site, sid, r["confirmation_id"], r["custom_data"], None, r["deadline"])
                for (site, sid), r in self.rows.items() if r["state"] == "open"]


@dataclass
class FakeServices:
    understanding: Any = None
    confirmations: Any = None
    devices: Any = None


@dataclass
class Harness:
    """A dialogue manager wired to fakes; ``published`` is every Hermes message in order."""

    dm: DialogueManager
    confirmations: FakeConfirmations
    understanding: FakeUnderstanding
    rows: FakeRows
    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def topics(self) -> list[str]:
        return [t for t, _ in self.published]

    def last(self, topic: str) -> dict[str, Any]:
        return [p for t, p in self.published if t == topic][-1]

    def of(self, topic: str) -> list[dict[str, Any]]:
        return [p for t, p in self.published if t == topic]

    def clear(self) -> None:
        self.published.clear()


def make_harness(**voice: Any) -> Harness:
    confirmations = FakeConfirmations()
    understanding = FakeUnderstanding(confirmations)
    rows = FakeRows()
    published: list[tuple[str, dict[str, Any]]] = []
    events: list[tuple[str, dict[str, Any]]] = []

    async def publish(topic: str, payload: dict[str, Any], *, wait: bool = False) -> None:
        published.append((topic, payload))

    @contextlib.asynccontextmanager
    async def transaction(inbound: Any) -> AsyncIterator[None]:
        yield None

    async def record_event(kind: str, **kw: Any) -> int:
        events.append((kind, kw))
        return len(events)

    cfg = VoiceSection(**{"sites": ("kitchen", "bedroom"), **voice})
    deps = VoiceDeps(publish=publish, transaction=transaction, record_event=record_event,  # type: ignore[arg-type]
                     sessions=rows, services=FakeServices(understanding, confirmations))
    dm = DialogueManager(config=cfg, deps=deps)
    return Harness(dm=dm, confirmations=confirmations, understanding=understanding, rows=rows,
                   published=published, events=events)
