"""Devices: list with state and availability, one device, and actions (hazardous ones open a confirmation)."""

from __future__ import annotations

import uuid

from hub.contracts import DeviceAction, DeviceInfo, Principal
from hub.web.api.errors import ApiError, require
from hub.web.api.models import (
    ActionBody,
    CommandOut,
    ConfirmationOut,
    DeviceOut,
    DevicePath,
    DevicesOut,
)
from hub.web.api.routing import Call, Reply, RouteTable
from hub.web.api.views import confirmation_out

routes = RouteTable(tag="devices")

WEB_PRINCIPAL = Principal(kind="user", user="web")


def device_out(devices: object, info: DeviceInfo) -> DeviceOut:
    state = devices.state(info.name)  # type: ignore[attr-defined]
    return DeviceOut(
        name=info.name, label=info.label, kind=info.kind, area=info.area, adapter=info.adapter,
        capabilities=list(info.capabilities), hazards=dict(info.hazards),
        state=dict(state.state) if state else {}, available=state.available if state else None,
        updated_at=state.updated_at if state else None,
    )


@routes.get("/devices", summary="All devices with their state and availability",
            responses={200: ("the devices", DevicesOut)}, errors=(503,))
async def list_devices(call: Call) -> Reply:
    devices = require(call.deps.services, "devices")
    infos = sorted(devices.all(), key=lambda d: (d.area, d.label))
    return Reply(DevicesOut(devices=[device_out(devices, i) for i in infos]))


@routes.get("/devices/{name}", summary="One device", path_model=DevicePath,
            responses={200: ("the device", DeviceOut)}, errors=(404, 503))
async def get_device(call: Call) -> Reply:
    devices = require(call.deps.services, "devices")
    info = devices.get(call.path.name)
    if info is None:
        raise ApiError(404, "not_found", f"no device called {call.path.name!r}")
    return Reply(device_out(devices, info))


@routes.post("/devices/{name}/actions", summary="Act on a device", path_model=DevicePath, body=ActionBody,
             description="A non-hazardous action is written to the outbox and published once (200). A hazardous "
                         "one (unlock, open the garage, disarm, oven on …) opens a confirmation instead (202): "
                         "approve it with POST /api/v1/confirmations/{id}/approve.",
             responses={200: ("the command is queued", CommandOut),
                        202: ("a confirmation was opened", ConfirmationOut)},
             errors=(404, 409, 503))
async def device_action(call: Call) -> Reply:
    services = call.deps.services
    devices = require(services, "devices")
    body: ActionBody = call.body
    if devices.get(call.path.name) is None:
        raise ApiError(404, "not_found", f"no device called {call.path.name!r}")
    action = DeviceAction(device=call.path.name, action=body.action, params=dict(body.params))
    if (why := devices.validate(action)) is not None:
        # Valid JSON, but not something this device can do now (unknown verb, bad value, unavailable).
        raise ApiError(409, "action_refused", why)
    hazard = devices.hazard_class(action)
    if hazard is not None:
        confirmations = require(services, "confirmations")
        confirmation = await confirmations.request(action, hazard_class=hazard, principal=WEB_PRINCIPAL,
                                                   correlation_id=f"web:{uuid.uuid4().hex[:12]}")
        return Reply(confirmation_out(confirmation), status=202)
    spine = call.deps.spine
    if call.deps.store is None or spine is None:
        raise ApiError(503, "service_unavailable", "the store or the MQTT spine is not running yet")
    key = f"web:{uuid.uuid4().hex}"
    async with spine.transaction() as conn:  # the relay publishes the command right after the commit
        outbox_id = await devices.enqueue_command(conn, action, key=key, correlation_id=key)
    return Reply(CommandOut(status="queued", device=action.device, action=action.action, key=key,
                            outbox_id=outbox_id))
