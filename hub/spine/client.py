"""The MQTT 5 connection, on gmqtt: persistent session, LWT, back-off reconnect, acks we control.

Why gmqtt: with ``optimistic_acknowledgement=False`` it sends PUBACK/PUBREC only after our async
``on_message`` returns, which is what persist-before-acknowledge needs (paho and aiomqtt 2.x acknowledge
before the application sees the message). ``tests/fault/test_ack_order.py`` proves the order.
Outbound QoS 1/2 completion (PUBACK/PUBCOMP) is observed through the storage hook below.
"""

from __future__ import annotations

import asyncio
import random
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from gmqtt import Client, Message
from gmqtt.mqtt.constants import MQTTv50
from gmqtt.storage import PersistentStorage

from hub.config import MqttSection
from hub.errors import SpineError
from hub.spine.topics import validate_publish_topic

log = structlog.get_logger("kitt.spine.client")

OnMessage = Callable[[str, bytes, int, dict[str, Any]], Awaitable[int]]


class AckTrackingStorage(PersistentStorage):
    """gmqtt's in-flight store, plus a future per mid resolved on PUBACK/PUBCOMP.

    ``publish()`` is synchronous and returns no mid, so the store remembers the last mid pushed; the caller
    reads it right after publishing (no await in between, so no other publish can interleave).
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_mid: int | None = None
        self._waiters: dict[int, asyncio.Future[None]] = {}

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        self.last_mid = mid

    def waiter(self, mid: int) -> asyncio.Future[None]:
        fut = self._waiters.get(mid)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._waiters[mid] = fut
        return fut

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        fut = self._waiters.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def clear(self) -> None:
        # The broker did not keep the session: whatever was in flight must be sent again by its owner.
        super().clear()
        waiters, self._waiters = self._waiters, {}
        for fut in waiters.values():
            if not fut.done():
                fut.set_exception(SpineError("session lost before acknowledgement"))


class MqttConnection:
    """Owns one gmqtt client. ``on_message`` must return a reason code (0 = accepted)."""

    def __init__(
        self,
        *,
        settings: MqttSection,
        client_id: str,
        status_topic: str,
        on_message: OnMessage,
        on_connected: Callable[[bool], Awaitable[None]],
        on_disconnected: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._client_id = client_id
        self._status_topic = status_topic
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._storage = AckTrackingStorage()
        self._client: Client | None = None
        self._connected = asyncio.Event()
        self._attempt = 0
        self._stopping = False
        self._connect_task: asyncio.Task[None] | None = None
        self._callback_tasks: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    def _build_client(self) -> Client:
        s = self._settings
        will = Message(self._status_topic, b"offline", qos=1, retain=True)
        client = Client(
            self._client_id,
            clean_session=False,
            optimistic_acknowledgement=False,
            will_message=will,
            persistent_storage=self._storage,
            session_expiry_interval=s.session_expiry_s,
            receive_maximum=s.receive_maximum,
        )
        # gmqtt reconnects by itself after a drop; we tune its delay (back-off with jitter) in on_disconnect.
        client.set_config({"reconnect_retries": -1, "reconnect_delay": 1})
        if s.username:
            client.set_auth_credentials(s.username, s.password)
        client.on_message = self._handle_message
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        return client

    def _ssl(self) -> ssl_module.SSLContext | bool:
        if not self._settings.tls:
            return False
        ctx = ssl_module.create_default_context(cafile=self._settings.tls_ca_file or None)
        if self._settings.tls_insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl_module.CERT_NONE
        return ctx

    def _backoff(self) -> float:
        """Exponential with full jitter, capped: 0.5, 1, 2, 4 … seconds."""
        self._attempt += 1
        ceiling = min(self._settings.reconnect_max_s, 0.5 * 2 ** min(self._attempt, 10))
        return random.uniform(ceiling / 2, ceiling)

    async def start(self) -> None:
        """Begin connecting in the background; never raises because the broker is away."""
        self._stopping = False
        self._connect_task = asyncio.create_task(self._connect_loop(), name="kitt[mqtt].connect")

    async def _connect_loop(self) -> None:
        s = self._settings
        while not self._stopping:
            self._client = self._build_client()
            try:
                await self._client.connect(s.host, s.port, ssl=self._ssl(), keepalive=s.keepalive_s,
                                           version=MQTTv50)
                return
            except (TimeoutError, OSError) as exc:
                delay = self._backoff()
                log.warning("MQTT broker not reachable; retrying", broker=s.redacted_url(),
                            error=str(exc) or type(exc).__name__, retry_in_s=round(delay, 2))
            except Exception as exc:  # gmqtt raises its own MQTTConnectError for refusals
                delay = self._backoff()
                log.error("MQTT connection refused; retrying", broker=s.redacted_url(), error=str(exc),
                          retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Task[None]) -> None:
        self._callback_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("MQTT connect callback failed", error=repr(task.exception()))

    def _handle_connect(self, client: Client, session_present: int, rc: int, properties: dict) -> None:
        self._attempt = 0
        self._connected.set()
        log.info("MQTT connected", broker=self._settings.redacted_url(), session_present=bool(session_present))
        client.publish(self._status_topic, b"online", qos=1, retain=True)
        self._spawn(self._on_connected(bool(session_present)), "kitt[mqtt].on_connected")

    def _handle_disconnect(self, client: Client, packet: Any, exc: Any = None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if self._client is not None and not self._stopping:
            delay = self._backoff()
            self._client.reconnect_delay = delay
            if was:
                log.warning("MQTT disconnected; reconnecting", retry_in_s=round(delay, 2))
        self._on_disconnected()

    async def _handle_message(self, client: Client, topic: str, payload: bytes, qos: int, properties: dict) -> int:
        return await self._on_message(topic, payload, qos, properties)

    def subscribe(self, filters: list[tuple[str, int]]) -> None:
        if self._client is None or not self.connected:
            raise SpineError("not connected")
        from gmqtt import Subscription

        self._client.subscribe([Subscription(f, qos=q, no_local=True) for f, q in filters])

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                       **properties: Any) -> asyncio.Future[None] | None:
        """Publish; for QoS > 0 return a future that resolves on PUBACK/PUBCOMP."""
        validate_publish_topic(topic)
        if self._client is None or not self.connected:
            raise SpineError("not connected")
        self._storage.last_mid = None
        self._client.publish(Message(topic, payload, qos=qos, retain=retain, **properties))
        if qos == 0:
            return None
        mid = self._storage.last_mid
        if mid is None:
            raise SpineError("publish was not stored")
        return self._storage.waiter(mid)

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      timeout: float = 10.0, **properties: Any) -> None:
        fut = self.publish_nowait(topic, payload, qos=qos, retain=retain, **properties)
        if fut is not None:
            await asyncio.wait_for(fut, timeout)

    async def stop(self) -> None:
        self._stopping = True
        if self._connect_task is not None:
            self._connect_task.cancel()
            await asyncio.gather(self._connect_task, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None and self._connected.is_set():
            # A clean goodbye: mark offline ourselves (the LWT is not sent on a normal DISCONNECT).
            fut = None
            try:
                client.publish(self._status_topic, b"offline", qos=1, retain=True)
                fut = self._storage.waiter(self._storage.last_mid) if self._storage.last_mid else None
                if fut is not None:
                    await asyncio.wait_for(fut, 2)
            except (TimeoutError, SpineError) as exc:
                log.warning("could not publish offline status", error=str(exc))
            await client.disconnect()
        elif client is not None:
            client.stop_reconnect()
            await client.disconnect()
        self._connected.clear()
        for task in list(self._callback_tasks):
            task.cancel()
        await asyncio.gather(*self._callback_tasks, return_exceptions=True)

    async def bounce(self) -> None:
        """Drop the connection so gmqtt reconnects with the session: the broker resends un-acked messages."""
        client = self._client
        if client is not None and self.connected:
            await client.reconnect(delay=False)
