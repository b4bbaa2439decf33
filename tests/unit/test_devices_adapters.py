"""Each adapter speaks its bridge's convention exactly (topics, payloads, availability forms)."""

from __future__ import annotations

import json

import pytest

from devices.adapters import UnsupportedAction, adapter_for
from devices.registry import Registry, build_device
from hub.config import DeviceSection
from hub.contracts import DeviceAction


def device(name: str, **kw):
    return build_device(name, DeviceSection.model_validate(kw))


def test_zigbee2mqtt_topics_and_set_payloads() -> None:
    light = adapter_for(device("kitchen_light", adapter="zigbee2mqtt", kind="light"))
    assert light.topics() == {"zigbee2mqtt/kitchen_light": "state",
                              "zigbee2mqtt/kitchen_light/availability": "availability",
                              "zigbee2mqtt/bridge/state": "bridge"}
    [cmd] = light.commands(DeviceAction("kitchen_light", "turn_on"), key="k1")
    assert (cmd.topic, cmd.payload) == ("zigbee2mqtt/kitchen_light/set", {"state": "ON"})
    [cmd] = light.commands(DeviceAction("kitchen_light", "set_brightness", {"brightness": 50}))
    assert cmd.payload == {"brightness": 127}
    lock = adapter_for(device("front_door", adapter="zigbee2mqtt", kind="lock"))
    assert lock.commands(DeviceAction("front_door", "unlock"))[0].payload == {"state": "UNLOCK"}
    thermo = adapter_for(device("t", adapter="zigbee2mqtt", kind="climate", setpoint="current_heating_setpoint"))
    assert thermo.commands(DeviceAction("t", "set_temperature", {"temperature": 21}))[0].payload == {
        "current_heating_setpoint": 21.0}
    assert light.refresh()[0].topic == "zigbee2mqtt/kitchen_light/get"
    with pytest.raises(UnsupportedAction):
        lock.commands(DeviceAction("front_door", "set_brightness", {"brightness": 3}))


def test_zigbee2mqtt_state_and_both_availability_forms() -> None:
    light = adapter_for(device("l", adapter="zigbee2mqtt", kind="light", base_topic="z2m"))
    assert light.parse("state", b'{"state":"ON","brightness":254,"linkquality":80}').state == {
        "state": "ON", "brightness": 100, "linkquality": 80}
    assert light.parse("availability", b"offline").available is False
    assert light.parse("availability", b'{"state":"online"}').available is True
    assert light.parse("bridge", b'{"state":"offline"}').bridge_available is False
    assert light.parse("bridge", b"online").bridge_available is True
    assert light.parse("state", b"not json") is None
    lock = adapter_for(device("d", adapter="zigbee2mqtt", kind="lock"))
    assert lock.parse("state", b'{"state":"LOCK","lock_state":"locked"}').state == {"lock": "LOCKED"}
    cover = adapter_for(device("g", adapter="zigbee2mqtt", kind="cover", device_class="garage"))
    assert cover.parse("state", b'{"state":"OPEN","position":100}').state == {"cover": "open", "position": 100.0}


def test_tasmota_commands_and_reports() -> None:
    oven = adapter_for(device("oven", adapter="tasmota", kind="appliance", topic="oven"))
    assert set(oven.topics()) == {"stat/oven/RESULT", "stat/oven/POWER", "tele/oven/STATE", "tele/oven/SENSOR",
                                  "tele/oven/LWT"}
    [cmd] = oven.commands(DeviceAction("oven", "turn_on"))
    assert (cmd.topic, cmd.payload) == ("cmnd/oven/POWER", "ON")
    assert oven.parse("json", b'{"POWER":"OFF"}').state == {"state": "OFF"}
    assert oven.parse("power", b"ON").state == {"state": "ON"}
    assert oven.parse("lwt", b"Offline").available is False
    assert oven.parse("lwt", b"Online").available is True
    assert oven.refresh()[0].payload == ""
    relay2 = adapter_for(device("s", adapter="tasmota", kind="switch", topic="strip", relay=2))
    assert relay2.commands(DeviceAction("s", "toggle"))[0].topic == "cmnd/strip/POWER2"


def test_generic_templates_and_plain_state() -> None:
    alarm = adapter_for(device("alarm", adapter="generic", kind="alarm", topic="home/alarm"))
    assert alarm.topics() == {"home/alarm/state": "state", "home/alarm/availability": "availability"}
    assert alarm.commands(DeviceAction("alarm", "arm", {"mode": "night"}))[0].payload == "ARM_NIGHT"
    assert alarm.commands(DeviceAction("alarm", "disarm"))[0].payload == "DISARM"
    assert alarm.parse("state", b"armed_home").state == {"alarm": "armed_home"}
    custom = adapter_for(device("v", adapter="generic", kind="valve", topic="garden/valve",
                                payloads={"open": '{"cmd": "open", "id": "{key}"}'}))
    assert custom.commands(DeviceAction("v", "open"), key="abc")[0].payload == {"cmd": "open", "id": "abc"}
    assert json.dumps(custom.commands(DeviceAction("v", "close"))[0].payload) == '"CLOSE"'


def test_hazard_defaults_and_overrides() -> None:
    reg = Registry([
        device("front_door", adapter="zigbee2mqtt", kind="lock"),
        device("garage_door", adapter="zigbee2mqtt", kind="cover", device_class="garage"),
        device("blind", adapter="zigbee2mqtt", kind="cover", device_class="blind"),
        device("oven", adapter="tasmota", kind="appliance"),
        device("kettle", adapter="tasmota", kind="appliance", hazard={"turn_on": False}),
        device("lamp", adapter="zigbee2mqtt", kind="light", hazard={"turn_on": "custom.lamp"}),
        device("alarm", adapter="generic", kind="alarm"),
        device("water", adapter="generic", kind="valve"),
    ])
    h = reg.hazard_class
    assert h(DeviceAction("front_door", "unlock")) == "lock.unlock" and h(DeviceAction("front_door", "lock")) is None
    assert h(DeviceAction("garage_door", "open")) == "cover.open" and h(DeviceAction("garage_door", "close")) is None
    assert h(DeviceAction("garage_door", "set_position", {"position": 0})) is None
    assert h(DeviceAction("blind", "open")) is None
    assert h(DeviceAction("oven", "turn_on")) == "appliance.on" and h(DeviceAction("kettle", "turn_on")) is None
    assert h(DeviceAction("lamp", "turn_on")) == "custom.lamp"
    assert h(DeviceAction("alarm", "disarm")) == "alarm.disarm" and h(DeviceAction("alarm", "arm")) is None
    assert h(DeviceAction("water", "open")) == "valve.open"
