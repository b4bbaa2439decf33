"""Approve or cancel a pending confirmation over MQTT: ``kitt/<hub_id>/confirm/<id>``.

Payload ``approve`` / ``cancel``, or JSON ``{"action": "approve", "pin": "1234"}``. The broker's ACL is what
authenticates this topic (the Mosquitto drop-in allows anonymous clients on loopback only), so a message
here counts as a person (``user:mqtt``). The result goes to ``kitt/<hub_id>/confirm/<id>/result``.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from hub.contracts import ConfirmationError, Principal
from hub.errors import InputRejected
from hub.plugins import PluginContext
from hub.spine import Inbound, Route


class ConfirmCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str = Field(pattern="^(approve|cancel)$")
    pin: str | None = Field(default=None, max_length=12)
    id: str | None = Field(default=None, max_length=200)


def parse_command(payload: bytes) -> ConfirmCommand:
    text = payload.decode("utf-8", errors="strict").strip()
    if text in ("approve", "cancel"):
        return ConfirmCommand(action=text)
    try:
        return ConfirmCommand.model_validate_json(text)
    except ValueError as exc:
        raise InputRejected("invalid_payload", 'expected "approve", "cancel" or {"action": …, "pin": …}') from exc


class ConfirmTopicHandler:
    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx

    async def start(self) -> None:
        self._ctx.route(Route(filter=self._ctx.spine.topics.confirm_filter, handler=self.handle,
                              name="confirm", accept_retained=False))

    async def stop(self) -> None:
        return None

    async def handle(self, msg: Inbound) -> None:
        try:
            command = parse_command(msg.payload)
        except UnicodeDecodeError as exc:
            raise InputRejected("invalid_encoding", "payload is not UTF-8") from exc
        confirmation_id = msg.topic.rsplit("/", 1)[-1]
        service = self._ctx.services.confirmations
        result: dict[str, object] = {"id": confirmation_id, "action": command.action}
        if service is None:
            result.update(ok=False, error="confirmations are not available")
        else:
            principal = Principal(kind="user", user="mqtt")
            try:
                if command.action == "approve":
                    done = await service.approve(confirmation_id, principal=principal, pin=command.pin)
                else:
                    done = await service.cancel(confirmation_id, principal=principal)
                result.update(ok=True, state=done.state)
            except ConfirmationError as exc:
                result.update(ok=False, error=exc.reason, message=str(exc))
        await self._ctx.spine.publish(f"{msg.topic}/result", json.dumps(result), qos=1)


def create(ctx: PluginContext) -> ConfirmTopicHandler:
    return ConfirmTopicHandler(ctx)
