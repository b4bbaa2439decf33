"""The transactional outbox: a handler writes its command in the same transaction as its state change;
the relay publishes rows at their QoS in id order, marks them sent on PUBACK/PUBCOMP, and resumes after a
reconnect or restart. Every message carries its idempotency key as the MQTT 5 user property ``id``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from hub.errors import SpineError, StoreError
from hub.metrics import Metrics
from hub.spine.client import MqttConnection
from hub.spine.inbox import properties_from_json, properties_to_json
from hub.spine.topics import validate_publish_topic
from hub.store import Store

log = structlog.get_logger("kitt.spine.outbox")

CLAIM_SECONDS = 30
BATCH = 128
ACK_TIMEOUT_S = 10.0

_ENQUEUE_SQL = """INSERT INTO outbox (idempotency_key, topic, payload, qos, retain, properties, correlation_id)
                  VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7)
                  ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"""
# $1 key, $2 topic, $3 payload, $4 qos, $5 retain, $6 properties json, $7 correlation id


async def enqueue(
    conn: asyncpg.Connection,
    *,
    topic: str,
    payload: bytes | str | dict[str, Any] | list[Any],
    key: str,
    qos: int = 2,
    retain: bool = False,
    properties: dict[str, Any] | None = None,
    correlation_id: str | None = None,
) -> int | None:
    """Add a message to the outbox inside the caller's transaction. None: that key was enqueued before."""
    validate_publish_topic(topic)
    if isinstance(payload, dict | list):
        payload = json.dumps(payload, separators=(",", ":"))
    if isinstance(payload, str):
        payload = payload.encode()
    return await conn.fetchval(
        _ENQUEUE_SQL, key, topic, payload, qos, retain, properties_to_json(properties or {}), correlation_id
    )


class OutboxRelay:
    """Publishes outbox rows. ``notify()`` after a commit wakes it at once; it also polls for other hubs' rows."""

    def __init__(self, *, store: Store, connection: MqttConnection, metrics: Metrics, owner: str,
                 poll_interval_s: float = 1.0, on_sent: Callable[[list[int]], None] | None = None) -> None:
        self._store = store
        self._conn = connection
        self._metrics = metrics
        self._owner = owner
        self._poll = poll_interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._on_sent = on_sent

    def notify(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kitt[spine].outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def drain(self, timeout: float) -> bool:
        """Wait until the relay finds nothing to send (used on shutdown). True if drained in time."""
        self._idle.clear()
        self.notify()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll)
            except TimeoutError:
                pass
            self._wake.clear()
            if not self._conn.connected:
                continue
            try:
                while await self._relay_batch():
                    pass
                self._idle.set()
            except StoreError as exc:
                log.error("outbox relay: database unavailable", error=str(exc))
                await asyncio.sleep(1)

    async def _relay_batch(self) -> bool:
        rows = await self._store.write_fetch(
            """UPDATE outbox SET claimed_by = $1, claimed_until = now() + make_interval(secs => $2),
                                 attempts = attempts + 1
               WHERE id IN (SELECT id FROM outbox WHERE sent_at IS NULL
                              AND (claimed_by = $1 OR claimed_until IS NULL OR claimed_until < now())
                            ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
               RETURNING id, idempotency_key, topic, payload, qos, retain, properties""",
            # $1 owner, $2 claim seconds, $3 batch size
            self._owner, float(CLAIM_SECONDS), BATCH,
        )
        if not rows:
            await self._refresh_gauge()
            return False
        rows = sorted(rows, key=lambda r: r["id"])
        pending: list[tuple[int, asyncio.Future[None] | None]] = []
        for r in rows:
            props = properties_from_json(r["properties"])
            user = [tuple(p) for p in props.pop("user_property", [])]
            user = [p for p in user if p[0] != "id"] + [("id", r["idempotency_key"])]
            try:
                fut = self._conn.publish_nowait(r["topic"], bytes(r["payload"]), qos=r["qos"], retain=r["retain"],
                                                user_property=user, **props)
            except SpineError:
                break  # the connection dropped: what is left stays claimed by us and goes after reconnect
            pending.append((r["id"], fut))
        sent: list[int] = []
        for row_id, fut in pending:
            if fut is None:
                sent.append(row_id)
                continue
            try:
                await asyncio.wait_for(asyncio.shield(fut), ACK_TIMEOUT_S)
                sent.append(row_id)
            except (TimeoutError, SpineError) as exc:
                log.warning("outbox: no acknowledgement; will resend", row=row_id, error=str(exc) or "timeout")
                break
        if sent:
            await self._store.write("UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", sent)
            for _ in sent:
                self._metrics.mqtt_published.labels(topic_class="outbox").inc()
            if self._on_sent is not None:
                self._on_sent(sent)
        unsent = [r["id"] for r in rows if r["id"] not in set(sent)]
        if unsent:
            await self._store.write(
                "UPDATE outbox SET claimed_until = NULL WHERE id = ANY($1::bigint[]) AND sent_at IS NULL", unsent
            )
            return False
        return True

    async def _refresh_gauge(self) -> None:
        count = await self._store.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        self._metrics.outbox_pending.set(count or 0)

    async def prune(self, retention_s: int) -> int:
        status = await self._store.write(
            "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1)",
            float(retention_s),
        )
        return int(status.split()[-1])
