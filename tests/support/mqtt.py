"""MQTT helpers for tests: a gmqtt test client that collects messages per topic filter, and a packet tap.

``TestClient`` publishes QoS 1/2 and waits for PUBACK/PUBCOMP (respecting the broker's Receive Maximum), with
MQTT 5 user properties, response topic and correlation data; ``collect(filter)`` subscribes and gathers what
arrives. ``MqttTap`` is a TCP proxy between a client and the broker that timestamps every packet by type and
direction, so a test can see *when* a client sent PUBREC (acks are hop by hop: the publisher's PUBREC comes
from the broker, only a tap in front of the subscriber shows the subscriber's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gmqtt import Client, Message, Subscription
from gmqtt.mqtt.constants import MQTTv50
from gmqtt.storage import PersistentStorage

from hub.spine.topics import matches


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    properties: dict[str, Any]
    at: float = field(default_factory=time.monotonic)

    @property
    def user_properties(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.properties.get("user_property", []) or []}

    @property
    def correlation_data(self) -> bytes | None:
        value = self.properties.get("correlation_data")
        return value[0] if isinstance(value, list) and value else value

    def json(self) -> Any:
        return json.loads(self.payload)


class Collector:
    """Messages matching one filter, in arrival order."""

    def __init__(self, topic_filter: str) -> None:
        self.filter = topic_filter
        self.messages: list[Received] = []
        self._changed = asyncio.Event()

    def add(self, msg: Received) -> None:
        self.messages.append(msg)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float) -> list[Received]:
        """Wait until at least ``count`` messages arrived; raise TimeoutError naming how many did."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.filter}: {len(self.messages)} of {count} messages")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
        return self.messages

    async def settle(self, quiet_s: float = 0.5, timeout: float = 30.0) -> list[Received]:
        """Wait until nothing new arrived for ``quiet_s`` (to catch late duplicates)."""
        deadline = time.monotonic() + timeout
        seen = -1
        while seen != len(self.messages) and time.monotonic() < deadline:
            seen = len(self.messages)
            await asyncio.sleep(quiet_s)
        return self.messages


class _Storage(PersistentStorage):
    """gmqtt's in-flight store, resolving a future per mid on PUBACK/PUBCOMP."""

    def __init__(self) -> None:
        super().__init__()
        self.last_mid: int | None = None
        self.waiters: dict[int, asyncio.Future[None]] = {}

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        self.last_mid = mid

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        fut = self.waiters.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)


class TestClient:
    """A gmqtt MQTT 5 client for tests. ``async with TestClient(port) as c: ...``."""

    __test__ = False  # not a pytest class

    def __init__(self, port: int, *, client_id: str | None = None, clean_start: bool = True,
                 session_expiry_s: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.client_id = client_id or f"test-{uuid.uuid4().hex[:10]}"
        self._clean = clean_start
        self._expiry = session_expiry_s
        self._storage = _Storage()
        self._client: Client | None = None
        self._collectors: list[Collector] = []
        self._subacks: dict[int, asyncio.Future[Any]] = {}
        self._window: asyncio.Semaphore | None = None

    async def connect(self) -> None:
        kwargs: dict[str, Any] = {}
        if self._expiry:
            kwargs["session_expiry_interval"] = self._expiry
        client = Client(self.client_id, clean_session=self._clean, persistent_storage=self._storage, **kwargs)
        client.set_config({"reconnect_retries": -1, "reconnect_delay": 0.5})
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        await client.connect(self.host, self.port, version=MQTTv50, keepalive=30)
        self._client = client
        recv_max = (client._package_handler._connack_properties.get("receive_maximum") or [65535])[0]
        self._window = asyncio.Semaphore(max(1, min(recv_max, 65535) - 2))

    async def disconnect(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.disconnect()

    async def __aenter__(self) -> TestClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    @property
    def client(self) -> Client:
        assert self._client is not None, "not connected"
        return self._client

    def _on_message(self, client: Client, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> int:
        msg = Received(topic, payload, qos, properties)
        for col in self._collectors:
            if matches(col.filter, topic):
                col.add(msg)
        return 0

    def _on_subscribe(self, client: Client, mid: int, qos: Any, properties: Any) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(qos)

    async def collect(self, topic_filter: str, qos: int = 2, timeout: float = 5.0) -> Collector:
        """Subscribe (waits for SUBACK) and return the collector for that filter."""
        col = Collector(topic_filter)
        self._collectors.append(col)
        mid = self.client.subscribe(Subscription(topic_filter, qos=qos))
        fut = asyncio.get_running_loop().create_future()
        self._subacks[mid] = fut
        granted = await asyncio.wait_for(fut, timeout)
        if any(g >= 0x80 for g in granted):
            raise RuntimeError(f"subscription to {topic_filter} refused: {granted}")
        return col

    async def publish(self, topic: str, payload: bytes | str | dict[str, Any], *, qos: int = 2,
                      retain: bool = False, user_properties: Iterable[tuple[str, str]] = (),
                      response_topic: str | None = None, correlation_data: bytes | None = None,
                      wait: bool = True, timeout: float = 10.0) -> None:
        """Publish; for QoS > 0 wait for PUBACK/PUBCOMP unless ``wait=False`` (the window still applies)."""
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        if isinstance(payload, str):
            payload = payload.encode()
        props: dict[str, Any] = {}
        if user_properties:
            props["user_property"] = list(user_properties)
        if response_topic:
            props["response_topic"] = response_topic
        if correlation_data is not None:
            props["correlation_data"] = correlation_data
        if qos == 0:
            self.client.publish(Message(topic, payload, qos=0, retain=retain, **props))
            return
        assert self._window is not None
        await self._window.acquire()
        self._storage.last_mid = None
        self.client.publish(Message(topic, payload, qos=qos, retain=retain, **props))
        mid = self._storage.last_mid
        assert mid is not None
        fut = asyncio.get_running_loop().create_future()
        self._storage.waiters[mid] = fut
        fut.add_done_callback(lambda _f: self._window.release() if self._window else None)
        if wait:
            await asyncio.wait_for(asyncio.shield(fut), timeout)

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until every QoS 1/2 publish of this client was acknowledged."""
        await asyncio.wait_for(self._storage.wait_empty(), timeout)


# --- replies -------------------------------------------------------------------------------------------


def check_replies(messages: list[Received], ids: set[str]) -> int:
    """Every id answered; copies of one reply are the same message (same idempotency key, same bytes).

    Returns the raw duplicate count (deliveries beyond the first of each reply).
    """
    by_id: dict[str, list[Received]] = defaultdict(list)
    for m in messages:
        by_id[m.json()["id"]].append(m)
    assert set(by_id) == ids, f"missing replies: {sorted(ids - set(by_id))[:10]}"
    for rid, copies in by_id.items():
        keys = {m.user_properties.get("id") for m in copies}
        assert len(keys) == 1 and None not in keys, (rid, keys)
        assert len({m.payload for m in copies}) == 1, rid
    return sum(len(c) - 1 for c in by_id.values())


# --- the packet tap ------------------------------------------------------------------------------------

PACKET_NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL", 7: "PUBCOMP",
                8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP",
                14: "DISCONNECT", 15: "AUTH"}


@dataclass
class Packet:
    direction: str  # "up" = client → broker, "down" = broker → client
    kind: str
    mid: int | None
    at: float
    topic: str | None = None


class MqttTap:
    """A TCP proxy on its own port in front of the broker that records every MQTT packet it forwards.

    ``on_packet(packet)`` (optional; sync or async) runs for each one before it is forwarded, so a test can
    check some state at the exact moment a client acknowledges (an async hook holds the packet back).
    ``drop_all()`` cuts every connection.
    """

    def __init__(self, broker_port: int, *, on_packet: Any = None) -> None:
        self.broker_port = broker_port
        self.port = 0
        self.packets: list[Packet] = []
        self._on_packet = on_packet
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.drop_all()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def __aenter__(self) -> MqttTap:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def drop_all(self) -> None:
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    def of(self, kind: str, direction: str) -> list[Packet]:
        return [p for p in self.packets if p.kind == kind and p.direction == direction]

    async def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            br, bw = await asyncio.open_connection("127.0.0.1", self.broker_port)
        except OSError:
            cw.close()
            return
        self._writers.update((cw, bw))
        for reader, writer, direction in ((cr, bw, "up"), (br, cw, "down")):
            task = asyncio.create_task(self._pipe(reader, writer, direction), name=f"tap.{direction}")
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        try:
            while True:
                first = await reader.readexactly(1)
                length, mult, header = 0, 1, b""
                while True:
                    b = await reader.readexactly(1)
                    header += b
                    length += (b[0] & 0x7F) * mult
                    mult *= 128
                    if not b[0] & 0x80:
                        break
                body = await reader.readexactly(length)
                hook = self._record(direction, first[0], body)
                if hook is not None:
                    await hook  # the test may hold this packet back while it looks at the world
                writer.write(first + header + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _record(self, direction: str, first: int, body: bytes) -> Any:
        kind = PACKET_NAMES.get(first >> 4, "?")
        mid: int | None = None
        topic: str | None = None
        if kind == "PUBLISH":
            tlen = int.from_bytes(body[:2], "big")
            topic = body[2:2 + tlen].decode(errors="replace")
            if (first >> 1) & 0x03:
                mid = int.from_bytes(body[2 + tlen:4 + tlen], "big")
        elif kind in ("PUBACK", "PUBREC", "PUBREL", "PUBCOMP"):
            mid = int.from_bytes(body[:2], "big")
        packet = Packet(direction, kind, mid, time.monotonic(), topic)
        self.packets.append(packet)
        if self._on_packet is not None:
            result = self._on_packet(packet)
            if asyncio.iscoroutine(result):
                return result
        return None


# --- an in-process spine ---------------------------------------------------------------------------------


@dataclass
class SpineEnv:
    spine: Any
    store: Any
    metrics: Any
    config: Any

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def running_spine(config: Any, *, routes: Iterable[Any] = (), plugins: Iterable[str] = (),
                        wait_ready: bool = True) -> Any:
    """A Store + Spine (+ plugins such as ``handlers.ask``) in this process, started; stopped on exit."""
    import importlib

    import structlog

    from hub.metrics import Metrics
    from hub.plugins import PluginContext, Services
    from hub.readiness import Readiness
    from hub.spine import Spine
    from hub.store import Store

    metrics = Metrics()
    store = Store(dsn=config.database.url, metrics=metrics, pool_min=2, pool_max=config.database.pool_max)
    await store.start()
    spine = Spine(config=config, store=store, metrics=metrics)
    started: list[Any] = []
    try:
        for route in routes:
            spine.add_route(route)
        for name in plugins:
            ctx = PluginContext(name=name, config=config, spine=spine, store=store, metrics=metrics,
                                services=Services(), readiness=Readiness(), log=structlog.get_logger(name))
            plugin = importlib.import_module(name).create(ctx)
            await plugin.start()
            started.append(plugin)
        await spine.start()
        if wait_ready:
            await spine.wait_ready(15)
        yield SpineEnv(spine, store, metrics, config)
    finally:
        await spine.stop(drain_timeout_s=5)
        for plugin in reversed(started):
            await plugin.stop()
        await store.stop()
