"""A bridge simulator: answers on the Zigbee2MQTT, Tasmota and generic topics of the configured devices the
way the real bridges do, for the demo, the tests and the benchmarks (``kitt-hub simulate``).

Zigbee2MQTT: ``<base>/bridge/state`` and each ``…/availability`` retained ``{"state": "online"}`` (2.x form,
or the plain 1.x form with ``legacy_availability=True``); ``/set`` applies the command and publishes the full
state JSON on ``<base>/<name>``; ``/get`` publishes the state. Tasmota: ``tele/<t>/LWT`` ``Online`` retained,
``cmnd/<t>/POWER`` → ``stat/<t>/RESULT`` ``{"POWER": "ON"}`` and ``stat/<t>/POWER`` ``ON``, an initial
``tele/<t>/STATE``. Generic: the configured command topic → the plain state on the state topic (retained).

One deliberate difference from the real bridges: a *retained* command is ignored (real bridges execute it,
which is the "ghost switching" the hub guards against); a shared test broker must never replay one.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from gmqtt import Client, Message, Subscription
from gmqtt.mqtt.constants import MQTTv50

from devices.adapters.generic import GenericAdapter
from devices.adapters.tasmota import TasmotaAdapter
from devices.adapters.zigbee2mqtt import Z2M_BRIGHTNESS_MAX, Zigbee2MqttAdapter
from devices.registry import Device, Registry
from hub.config import Config

log = structlog.get_logger("kitt.simulator")

INITIAL: dict[str, dict[str, Any]] = {
    "light": {"state": "OFF", "brightness": 0},
    "switch": {"state": "OFF"},
    "appliance": {"state": "OFF"},
    "lock": {"state": "LOCK", "lock_state": "locked"},
    "cover": {"state": "CLOSE", "position": 0},
    "valve": {"state": "CLOSE"},
    "climate": {"occupied_heating_setpoint": 20.0, "local_temperature": 19.5, "system_mode": "heat"},
    "alarm": {"state": "armed_away"},
    "sensor": {},
}


@dataclass
class Received:
    """A command the simulator acted on (what a real bridge would have seen)."""

    device: str
    topic: str
    payload: bytes
    user_properties: dict[str, str] = field(default_factory=dict)
    at: float = 0.0  # time.perf_counter() on arrival (benchmarks measure to here)


@dataclass
class _SimDevice:
    device: Device
    z2m: Zigbee2MqttAdapter | None = None
    tasmota: TasmotaAdapter | None = None
    generic: GenericAdapter | None = None
    state: dict[str, Any] = field(default_factory=dict)
    available: bool = True


class Simulator:
    """``async with Simulator(config, host, port) as sim:`` — or ``start()``/``stop()``."""

    def __init__(self, config: Config, host: str | None = None, port: int | None = None, *,
                 devices: Iterable[str] | None = None, legacy_availability: bool = False,
                 clear_retained_on_stop: bool = False, initial: dict[str, dict[str, Any]] | None = None,
                 on_command: Callable[[Received], None] | None = None) -> None:
        self._config = config
        self._host = host or config.mqtt.host
        self._port = port or config.mqtt.port
        self._legacy = legacy_availability
        self._clear = clear_retained_on_stop
        registry = Registry.from_config(config.devices)
        wanted = set(devices) if devices is not None else None
        self._devices: dict[str, _SimDevice] = {}
        for d in registry:
            if wanted is not None and d.name not in wanted:
                continue
            sim = _SimDevice(device=d, state=dict(INITIAL.get(d.kind, {})))
            if d.info.adapter == "zigbee2mqtt":
                sim.z2m = Zigbee2MqttAdapter(d)
            elif d.info.adapter == "tasmota":
                sim.tasmota = TasmotaAdapter(d)
            else:
                sim.generic = GenericAdapter(d)
            sim.state.update((initial or {}).get(d.name, {}))
            self._devices[d.name] = sim
        self._routes: dict[str, tuple[str, str]] = {}  # command topic → (device, verb)
        for name, sim in self._devices.items():
            if sim.z2m:
                self._routes[f"{sim.z2m.state_topic}/set"] = (name, "z2m_set")
                self._routes[f"{sim.z2m.state_topic}/get"] = (name, "z2m_get")
            elif sim.tasmota:
                self._routes[f"cmnd/{sim.tasmota.t}/{sim.tasmota.power}"] = (name, "tasmota_power")
                self._routes[f"cmnd/{sim.tasmota.t}/Dimmer"] = (name, "tasmota_dimmer")
            elif sim.generic:
                self._routes[sim.generic.command_topic] = (name, "generic")
        self.received: list[Received] = []
        self._on_command = on_command
        self._client: Client | None = None
        self._connected = asyncio.Event()
        self._retained: set[str] = set()

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        client = Client(f"kitt-sim-{uuid.uuid4().hex[:8]}", clean_session=True)
        client.on_message = self._on_message
        client.on_connect = lambda *_: self._connected.set()
        await client.connect(self._host, self._port, version=MQTTv50, keepalive=30)
        self._client = client
        await asyncio.wait_for(self._connected.wait(), 10)
        client.subscribe([Subscription(t, qos=1) for t in sorted(self._routes)])
        for base in sorted({s.z2m.base for s in self._devices.values() if s.z2m}):
            self._pub(f"{base}/bridge/state", self._availability(True), retain=True)
        for name, sim in self._devices.items():
            self._publish_availability(sim)
            if sim.tasmota:
                self._pub(f"tele/{sim.tasmota.t}/STATE", json.dumps(self._tasmota_state(sim)))
            self._publish_state(name)
        log.info("simulator running", devices=sorted(self._devices), broker=f"{self._host}:{self._port}")

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self._clear:
            # Leave a shared broker as we found it: empty retained payloads delete what we retained.
            for topic in sorted(self._retained):
                client.publish(Message(topic, b"", qos=1, retain=True))
        else:
            for base in sorted({s.z2m.base for s in self._devices.values() if s.z2m}):
                client.publish(Message(f"{base}/bridge/state", self._availability(False), qos=1, retain=True))
        await client.disconnect()

    # --- test controls -------------------------------------------------------------------------------------

    def set_available(self, name: str, available: bool) -> None:
        sim = self._devices[name]
        sim.available = available
        self._publish_availability(sim)

    def set_bridge(self, online: bool) -> None:
        """Zigbee2MQTT going down (``bridge/state`` offline) or coming back, for every simulated base topic."""
        for base in sorted({s.z2m.base for s in self._devices.values() if s.z2m}):
            self._pub(f"{base}/bridge/state", self._availability(online), retain=True)

    def set_state(self, name: str, **state: Any) -> None:
        """Change a device's state as if someone used it by hand, and report it."""
        self._devices[name].state.update(state)
        self._publish_state(name)

    def state(self, name: str) -> dict[str, Any]:
        return dict(self._devices[name].state)

    def commands(self, name: str | None = None) -> list[Received]:
        return [r for r in self.received if name is None or r.device == name]

    # --- bridge behaviour ---------------------------------------------------------------------------------

    def _on_message(self, client: Client, topic: str, payload: bytes, qos: int, properties: dict) -> int:
        route = self._routes.get(topic)
        if route is None:
            return 0
        if properties.get("retain"):
            log.warning("retained command ignored", topic=topic)
            return 0
        name, verb = route
        sim = self._devices[name]
        users = {str(k): str(v) for k, v in (properties.get("user_property") or [])}
        if verb != "z2m_get" and not (verb == "tasmota_power" and not payload.strip()):
            received = Received(device=name, topic=topic, payload=payload, user_properties=users,
                                at=time.perf_counter())
            self.received.append(received)
            if self._on_command is not None:
                self._on_command(received)
        if not sim.available:
            return 0  # an offline device does not answer
        if verb == "z2m_set":
            self._z2m_set(sim, payload)
            self._publish_state(name)
        elif verb == "z2m_get":
            self._publish_state(name)
        elif verb == "tasmota_power":
            self._tasmota_power(sim, payload.decode("utf-8", "replace").strip().upper())
        elif verb == "tasmota_dimmer":
            try:
                sim.state["Dimmer"] = int(float(payload.decode()))
            except ValueError:
                return 0
            self._pub(f"stat/{sim.tasmota.t}/RESULT", json.dumps({"Dimmer": sim.state["Dimmer"]}))  # type: ignore[union-attr]
        elif verb == "generic":
            self._generic(sim, payload.decode("utf-8", "replace").strip())
            self._publish_state(name)
        return 0

    def _z2m_set(self, sim: _SimDevice, payload: bytes) -> None:
        try:
            data = json.loads(payload)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        kind, st = sim.device.kind, sim.state
        for key, value in data.items():
            if key == "state" and isinstance(value, str):
                v = value.upper()
                if kind == "lock" and v in ("LOCK", "UNLOCK"):
                    st.update(state=v, lock_state="locked" if v == "LOCK" else "unlocked")
                elif kind in ("cover", "valve") and v in ("OPEN", "CLOSE", "STOP"):
                    st["state"] = v if v != "STOP" else st.get("state", "CLOSE")
                    if kind == "cover" and v != "STOP":
                        st["position"] = 100 if v == "OPEN" else 0
                elif v == "TOGGLE":
                    st["state"] = "OFF" if st.get("state") == "ON" else "ON"
                elif v in ("ON", "OFF"):
                    st["state"] = v
            elif key == "brightness":
                st["brightness"] = max(0, min(Z2M_BRIGHTNESS_MAX, int(value)))
                st["state"] = "ON" if st["brightness"] > 0 else "OFF"
            elif key == "position" and kind == "cover":
                st["position"] = float(value)
                st["state"] = "OPEN" if float(value) > 0 else "CLOSE"
            else:
                st[key] = value

    def _tasmota_state(self, sim: _SimDevice) -> dict[str, Any]:
        assert sim.tasmota is not None
        out = {sim.tasmota.power: sim.state.get("state", "OFF")}
        if "Dimmer" in sim.state:
            out["Dimmer"] = sim.state["Dimmer"]
        return out

    def _tasmota_power(self, sim: _SimDevice, value: str) -> None:
        assert sim.tasmota is not None
        current = sim.state.get("state", "OFF")
        if value in ("ON", "1"):
            current = "ON"
        elif value in ("OFF", "0"):
            current = "OFF"
        elif value in ("TOGGLE", "2"):
            current = "OFF" if current == "ON" else "ON"
        elif value not in ("", "?"):
            return
        sim.state["state"] = current
        self._pub(f"stat/{sim.tasmota.t}/RESULT", json.dumps({sim.tasmota.power: current}))
        self._pub(f"stat/{sim.tasmota.t}/{sim.tasmota.power}", current)

    def _generic(self, sim: _SimDevice, value: str) -> None:
        kind, v = sim.device.kind, value.upper()
        if kind == "alarm":
            if v == "DISARM":
                sim.state["state"] = "disarmed"
            elif v.startswith("ARM_"):
                sim.state["state"] = "armed_" + v.removeprefix("ARM_").lower()
        elif kind == "lock":
            sim.state["state"] = {"LOCK": "LOCKED", "UNLOCK": "UNLOCKED"}.get(v, sim.state.get("state"))
        elif kind in ("cover", "valve"):
            sim.state["state"] = {"OPEN": "open", "CLOSE": "closed"}.get(v, sim.state.get("state"))
        else:
            sim.state["state"] = v

    # --- publishing ----------------------------------------------------------------------------------------

    def _availability(self, online: bool) -> str:
        word = "online" if online else "offline"
        return word if self._legacy else json.dumps({"state": word})

    def _publish_availability(self, sim: _SimDevice) -> None:
        if sim.z2m:
            self._pub(f"{sim.z2m.state_topic}/availability", self._availability(sim.available), retain=True)
        elif sim.tasmota:
            self._pub(f"tele/{sim.tasmota.t}/LWT", "Online" if sim.available else "Offline", retain=True)
        elif sim.generic:
            word = sim.generic.online if sim.available else sim.generic.offline
            self._pub(sim.generic.availability_topic, word, retain=True)

    def _publish_state(self, name: str) -> None:
        sim = self._devices[name]
        if sim.z2m:
            self._pub(sim.z2m.state_topic, json.dumps(sim.state))
        elif sim.tasmota:
            self._pub(f"tele/{sim.tasmota.t}/STATE", json.dumps(self._tasmota_state(sim)))
        elif sim.generic:
            self._pub(sim.generic.state_topic, str(sim.state.get("state", "")), retain=True)

    def _pub(self, topic: str, payload: str, *, retain: bool = False) -> None:
        if self._client is None:
            return
        if retain:
            self._retained.add(topic)
        self._client.publish(Message(topic, payload.encode(), qos=1, retain=retain))
