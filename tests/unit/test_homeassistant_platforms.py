"""Re-exposed devices: HA command payloads → device actions, normalised device state → HA state payloads."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from handlers.homeassistant.platforms import (
    NONE,
    ExposedDevice,
    parse_command,
    render_availability,
    render_state,
)
from hub.contracts import DeviceAction, DeviceState
from hub.errors import InputRejected


def dev(kind: str, name: str = "d1") -> ExposedDevice:
    return ExposedDevice(name=name, label=name, kind=kind, area="", adapter="zigbee2mqtt")


def st(**state: object) -> DeviceState:
    return DeviceState(name="d1", state=dict(state), available=True, updated_at=datetime.now(UTC))


@pytest.mark.parametrize(("kind", "part", "payload", "expected"), [
    ("light", None, b'{"state":"ON"}', DeviceAction("d1", "turn_on")),
    ("light", None, b'{"state":"OFF"}', DeviceAction("d1", "turn_off")),
    ("light", None, b'{"state":"ON","brightness":40}', DeviceAction("d1", "set_brightness", {"brightness": 40})),
    ("switch", None, b"ON", DeviceAction("d1", "turn_on")),
    ("appliance", None, b"OFF", DeviceAction("d1", "turn_off")),
    ("lock", None, b"UNLOCK", DeviceAction("d1", "unlock")),
    ("lock", None, b"LOCK", DeviceAction("d1", "lock")),
    ("cover", None, b"OPEN", DeviceAction("d1", "open")),
    ("cover", None, b"STOP", DeviceAction("d1", "stop")),
    ("valve", None, b"CLOSE", DeviceAction("d1", "close")),
    ("alarm", None, b"DISARM", DeviceAction("d1", "disarm")),
    ("alarm", None, b"ARM_AWAY", DeviceAction("d1", "arm", {"mode": "away"})),
    ("alarm", None, b"ARM_HOME", DeviceAction("d1", "arm", {"mode": "home"})),
    ("climate", "mode", b"heat", DeviceAction("d1", "turn_on")),
    ("climate", "mode", b"off", DeviceAction("d1", "turn_off")),
    ("climate", "temperature", b"21.5", DeviceAction("d1", "set_temperature", {"temperature": 21.5})),
])
def test_commands(kind: str, part: str | None, payload: bytes, expected: DeviceAction) -> None:
    assert parse_command(dev(kind), part, payload) == expected


@pytest.mark.parametrize(("kind", "part", "payload"), [
    ("lock", None, b"OPEN"),                       # no open feature: never a way around unlock
    ("switch", None, b"on"),                       # payloads are exact
    ("light", None, b"ON"),                        # the JSON schema wants JSON
    ("light", None, b'{"state":"ON","brightness":400}'),
    ("climate", "mode", b"cool"),
    ("climate", "temperature", b"warm"),
    ("climate", "fan", b"x"),
    ("cover", "mode", b"OPEN"),
    ("alarm", None, b"\xff"),
])
def test_bad_commands_are_rejected_with_a_reason(kind: str, part: str | None, payload: bytes) -> None:
    with pytest.raises(InputRejected) as err:
        parse_command(dev(kind), part, payload)
    assert err.value.reason in ("invalid_payload", "invalid_json", "invalid_topic", "invalid_encoding")


def test_states() -> None:
    assert json.loads(render_state(dev("light"), st(state="ON", brightness=80))) == {"state": "ON", "brightness": 80}
    assert json.loads(render_state(dev("light"), None)) == {"state": None}
    assert render_state(dev("lock"), st(lock="UNLOCKED")) == "UNLOCKED"
    assert render_state(dev("lock"), st(lock="weird")) == NONE
    assert render_state(dev("cover"), st(cover="OPENING")) == "opening"
    assert render_state(dev("valve"), st(valve="closed")) == "closed"
    assert render_state(dev("alarm"), st(alarm="armed_away")) == "armed_away"
    assert render_state(dev("appliance"), st(state="OFF")) == "OFF"
    assert render_state(dev("switch"), None) == NONE
    climate = json.loads(render_state(dev("climate"), st(state="ON", temperature=21, current_temperature=19.5)))
    assert climate == {"mode": "heat", "temperature": 21, "current_temperature": 19.5}
    assert json.loads(render_state(dev("climate"), None)) == {}


def test_availability() -> None:
    assert render_availability(None) == "online"
    assert render_availability(DeviceState("d1", {}, available=False, updated_at=None)) == "offline"
    assert render_availability(DeviceState("d1", {}, available=None, updated_at=None)) == "online"
