"""The MQTT 5 connection, on gmqtt: persistent session, LWT, back-off reconnect, acks we control.

Why gmqtt: with ``optimistic_acknowledgement=False`` it sends PUBACK/PUBREC only after our async
``on_message`` returns, which is what persist-before-acknowledge needs (paho and aiomqtt 2.x acknowledge
before the application sees the message; see docs/spine.md). ``tests/integration/test_spine_ack_order.py``
and ``tests/fault/test_ack_order.py`` prove the order.

Four things gmqtt leaves to us, done here:
- outbound flow control: gmqtt raises ``OverflowError`` once the broker's Receive Maximum worth of QoS 1/2
  publishes are unacknowledged; ``send()`` waits for a free slot instead (``OutboundWindow``);
- reconnect back-off: gmqtt retries at a fixed delay; ``_BackoffConfig`` makes every retry read a fresh
  exponential delay with jitter;
- SUBACK: ``subscribe()`` waits for it and raises when the broker refused a filter;
- write coalescing: the packets of one event-loop turn leave in one syscall (``_CoalescingTransport``).
"""

from __future__ import annotations

import asyncio
import random
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from gmqtt import Client, Message, Subscription
from gmqtt.mqtt.constants import MQTTCommands, MQTTv50
from gmqtt.storage import PersistentStorage

from hub.config import MqttSection
from hub.errors import SpineError
from hub.spine.topics import validate_publish_topic

log = structlog.get_logger("kitt.spine.client")

OnMessage = Callable[[str, bytes, int, dict[str, Any]], Awaitable[int]]

# Packet ids the window leaves free for SUBSCRIBE/UNSUBSCRIBE (gmqtt draws them from the same pool).
RESERVED_IDS = 3
# gmqtt draws packet ids from 1 up to the broker's Receive Maximum; capped, so that a new process can
# release every id its predecessor may have left at the broker (see ``_release_stale_packet_ids``).
MAX_PACKET_IDS = 4096
SUBACK_TIMEOUT_S = 10.0


class OutboundWindow:
    """How many QoS 1/2 publishes may await PUBACK/PUBCOMP: the broker's Receive Maximum, minus a reserve.

    Counted from gmqtt's in-flight store (one entry per unacknowledged mid, also across reconnects with the
    session kept), so the count is never out of step with the ids gmqtt holds.
    """

    def __init__(self) -> None:
        self.capacity = 16
        self._in_flight = 0
        self._free = asyncio.Event()
        self._free.set()

    def set_capacity(self, receive_maximum: int) -> None:
        self.capacity = max(1, min(receive_maximum, 65535) - RESERVED_IDS)
        self._update()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def full(self) -> bool:
        return self._in_flight >= self.capacity

    def changed(self, in_flight: int) -> None:
        self._in_flight = in_flight
        self._update()

    def _update(self) -> None:
        if self.full():
            self._free.clear()
        else:
            self._free.set()

    async def wait(self) -> None:
        while self.full():
            self._free.clear()
            await self._free.wait()


class AckTrackingStorage(PersistentStorage):
    """gmqtt's in-flight store, plus a future per mid resolved on PUBACK/PUBCOMP.

    ``publish()`` is synchronous and returns no mid, so the store remembers the last mid pushed; the caller
    reads it right after publishing (no await in between, so no other publish can interleave). A PUBREC
    swaps the stored PUBLISH for its PUBREL under the same mid: the count does not change.
    """

    def __init__(self, window: OutboundWindow) -> None:
        super().__init__()
        self.last_mid: int | None = None
        self._window = window
        self._waiters: dict[int, asyncio.Future[None]] = {}

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        self.last_mid = mid
        self._window.changed(len(self._messages))

    def waiter(self, mid: int) -> asyncio.Future[None]:
        fut = self._waiters.get(mid)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._waiters[mid] = fut
        return fut

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        self._window.changed(len(self._messages))
        fut = self._waiters.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def clear(self) -> None:
        # The broker did not keep the session: whatever was in flight must be sent again by its owner.
        super().clear()
        self._window.changed(0)
        waiters, self._waiters = self._waiters, {}
        for fut in waiters.values():
            if not fut.done():
                fut.set_exception(SpineError("session lost before acknowledgement"))


class _CoalescingTransport:
    """Wraps gmqtt's transport so the packets written in one event-loop turn leave in one ``write``.

    gmqtt writes each packet on its own (PUBREC, PUBCOMP, PUBLISH, PUBREL per request); under load one
    syscall per packet costs more than the MQTT work. Every write goes through one buffer, so order is kept.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._buffer: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._buffer:
            self._loop.call_soon(self._flush)
        self._buffer.append(data)

    def _flush(self) -> None:
        data = b"".join(self._buffer)
        self._buffer.clear()
        if data and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _BackoffConfig(dict[str, Any]):
    """gmqtt's connection config, where each read of ``reconnect_delay`` is the next back-off delay.

    gmqtt reads ``config["reconnect_delay"]`` right before each reconnect attempt (also after a failed one),
    so this turns its fixed delay into exponential back-off with jitter without forking its reconnect loop.
    """

    def __init__(self, base: dict[str, Any], next_delay: Callable[[], float]) -> None:
        super().__init__(base)
        self._next_delay = next_delay

    def __getitem__(self, key: str) -> Any:
        if key == "reconnect_delay":
            return self._next_delay()
        return super().__getitem__(key)


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
        self.window = OutboundWindow()
        self._storage = AckTrackingStorage(self.window)
        self._client: Client | None = None
        self._connected = asyncio.Event()
        self._attempt = 0
        self._stopping = False
        self._connect_task: asyncio.Task[None] | None = None
        self._callback_tasks: set[asyncio.Task[None]] = set()
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._connected_before = False

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def client_id(self) -> str:
        return self._client_id

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
        client.set_config({"reconnect_retries": -1})
        # gmqtt reconnects by itself after a drop; each attempt reads its delay from here (back-off + jitter).
        client._connection_state.config = _BackoffConfig(client._connection_state.config, self._backoff)
        if s.username:
            client.set_auth_credentials(s.username, s.password)
        client.on_message = self._handle_message
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_suback
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
        """Exponential with jitter, capped: about 0.5, 1, 2, 4 … seconds, each drawn from [ceiling/2, ceiling]."""
        self._attempt += 1
        ceiling = min(self._settings.reconnect_max_s, 0.5 * 2 ** min(self._attempt - 1, 10))
        delay = random.uniform(ceiling / 2, ceiling)
        if self._attempt > 1:
            log.info("MQTT reconnect back-off", attempt=self._attempt, delay_s=round(delay, 2))
        return delay

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
            # A refused attempt may have left gmqtt's own retry scheduled: stop it before building a new client.
            self._client.stop_reconnect()
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

    def _handle_connect(self, client: Client, session_present: int, rc: int, properties: dict[str, Any]) -> None:
        self._attempt = 0
        connection = client._connection
        if connection is not None and not isinstance(connection._transport, _CoalescingTransport):
            # Before anything else goes out on this connection (gmqtt replays in-flight packets after this).
            wrapped = _CoalescingTransport(connection._transport)
            connection._transport = wrapped
            connection._protocol._transport = wrapped
        # The broker's CONNACK value (gmqtt's ``properties`` merges our CONNECT values over it).
        recv_max = client._package_handler._connack_properties.get("receive_maximum") or [65535]
        ids = client._package_handler.id_generator
        ids._max = min(ids._max, MAX_PACKET_IDS)
        self.window.set_capacity(min(int(recv_max[0]), ids._max))
        if session_present and not self._connected_before:
            self._release_stale_packet_ids(client, ids._max)
        self._connected_before = True
        self.window.changed(len(self._storage.get_all()))
        self._connected.set()
        log.info("MQTT connected", broker=self._settings.redacted_url(), session_present=bool(session_present),
                 client_id=self._client_id, window=self.window.capacity)
        # The online status is QoS 0: it must never take a window slot the relay is waiting for, and the
        # retained copy is replaced on the next connect anyway.
        client.publish(self._status_topic, b"online", qos=0, retain=True)
        self._spawn(self._on_connected(bool(session_present)), "kitt[mqtt].on_connected")

    def _release_stale_packet_ids(self, client: Client, id_limit: int) -> None:
        """First connect of this process to a kept session: end the QoS 2 handshakes of the process before.

        The broker keeps, per session, the QoS 2 messages it received and acknowledged with PUBREC until the
        PUBREL comes, and Mosquitto delivers them only then. A process that died in between never sends it;
        its successor starts gmqtt's packet ids at 1 again, and a new PUBLISH reusing such an id would be
        taken by the broker as a resend of the *old* message, and the new one lost. So before publishing
        anything, send PUBREL for every id the old process may have used: the broker releases (delivers)
        what it held — rows whose ``sent_at`` was not written and which the relay publishes again with the
        same key — and answers PUBCOMP for ids it does not know.
        """
        for mid in range(1, id_limit):
            client._connection.send_command_with_mid(MQTTCommands.PUBREL | 2, mid, False)
        log.info("released packet ids left by a previous process", ids=id_limit - 1)

    def _handle_disconnect(self, client: Client, packet: Any, exc: Any = None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        for fut in self._subacks.values():
            if not fut.done():
                fut.set_exception(SpineError("disconnected before SUBACK"))
        self._subacks.clear()
        if was and not self._stopping:
            log.warning("MQTT disconnected; reconnecting with back-off")
        self._on_disconnected()

    def _handle_suback(self, client: Client, mid: int, granted: Any, properties: Any) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(list(granted))

    async def _handle_message(self, client: Client, topic: str, payload: bytes, qos: int,
                              properties: dict[str, Any]) -> int:
        return await self._on_message(topic, payload, qos, properties)

    async def subscribe(self, filters: list[tuple[str, int]]) -> None:
        """One SUBSCRIBE for all filters; waits for the SUBACK and raises if any filter was refused."""
        if not filters:
            return
        client = self._client
        if client is None or not self.connected:
            raise SpineError("not connected")
        topics = {f for f, _ in filters}
        # gmqtt keeps every Subscription it ever sent; keep only the live ones (bounded across reconnects).
        client.subscriptions = [sub for sub in client.subscriptions if sub.topic not in topics]
        # Retain As Published: a message queued for us while we were away keeps its retain flag, so a
        # retained command is recognised as one (routes with accept_retained=False never run it).
        mid = client.subscribe([Subscription(f, qos=q, no_local=not f.startswith("$share/"), retain_as_published=True)
                                for f, q in filters])
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._subacks[mid] = fut
        granted = await asyncio.wait_for(fut, SUBACK_TIMEOUT_S)
        refused = [f for (f, _), code in zip(filters, granted, strict=False) if code >= 0x80]
        if refused:
            raise SpineError(f"broker refused subscription(s): {', '.join(refused)}")

    async def unsubscribe(self, filters: list[str]) -> None:
        if self._client is not None and self.connected and filters:
            self._client.unsubscribe(filters)

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                       **properties: Any) -> asyncio.Future[None] | None:
        """Publish now; for QoS > 0 return a future resolved on PUBACK/PUBCOMP.

        Raises ``SpineError`` when not connected or when the outbound window is full (use ``send()`` to wait).
        """
        validate_publish_topic(topic)
        client = self._client
        if client is None or not self.connected:
            raise SpineError("not connected")
        if qos == 0:
            client.publish(Message(topic, payload, qos=0, retain=retain, **properties))
            return None
        if self.window.full():
            raise SpineError("outbound window full")
        self._storage.last_mid = None
        try:
            client.publish(Message(topic, payload, qos=qos, retain=retain, **properties))
        except OverflowError as exc:  # gmqtt's id pool ran out: the same condition as a full window
            raise SpineError("outbound window full") from exc
        mid = self._storage.last_mid
        if mid is None:
            raise SpineError("publish was not stored")
        return self._storage.waiter(mid)

    async def send(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                   **properties: Any) -> asyncio.Future[None] | None:
        """Publish once the window has room (back-pressure); returns the acknowledgement future."""
        while True:
            if not self.connected:
                raise SpineError("not connected")
            if qos == 0 or not self.window.full():
                return self.publish_nowait(topic, payload, qos=qos, retain=retain, **properties)
            await self.window.wait()

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      timeout: float = 10.0, **properties: Any) -> None:
        fut = await self.send(topic, payload, qos=qos, retain=retain, **properties)
        if fut is not None:
            await asyncio.wait_for(fut, timeout)

    async def stop(self) -> None:
        self._stopping = True
        if self._connect_task is not None:
            self._connect_task.cancel()
            await asyncio.gather(self._connect_task, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            client.stop_reconnect()
        if client is not None and self._connected.is_set():
            # A clean goodbye: mark offline ourselves (the LWT is not sent on a normal DISCONNECT).
            try:
                client.publish(self._status_topic, b"offline", qos=0, retain=True)
            except OverflowError as exc:
                log.warning("could not publish offline status", error=str(exc))
            await client.disconnect()
        elif client is not None:
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
