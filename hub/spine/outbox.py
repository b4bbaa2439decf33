"""The transactional outbox: a handler writes its command in the same transaction as its state change;
the relay publishes rows at their QoS in id order, marks them sent on PUBACK/PUBCOMP, and resumes after a
reconnect or restart. Every message carries its idempotency key as the MQTT 5 user property ``id``.

The relay is pipelined: it keeps up to the broker's window of publishes in flight while it claims the next
rows, and acknowledgements are marked sent in batches (one UPDATE per batch, not one per row). A row whose
publish was acknowledged but not yet marked sent when the process died is published again on the next start,
with the same ``id``: at-least-once towards the broker, exactly-once for a consumer that keeps the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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
BATCH = 256
GAUGE_INTERVAL_S = 1.0

_ENQUEUE_SQL = """INSERT INTO outbox (idempotency_key, topic, payload, qos, retain, properties, correlation_id,
                                      claimed_by, claimed_until)
                  VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7,
                          $8, CASE WHEN $8::text IS NULL THEN NULL ELSE now() + make_interval(secs => $9) END)
                  ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"""
# $1 key, $2 topic, $3 payload, $4 qos, $5 retain, $6 properties json, $7 correlation id, $8 claimed by (or
# NULL: any relay may take it), $9 claim seconds

_CLAIM_SQL = """
UPDATE outbox SET claimed_by = $1, claimed_until = now() + make_interval(secs => $2), attempts = attempts + 1
WHERE id IN (SELECT id FROM outbox WHERE sent_at IS NULL AND id <> ALL($4::bigint[])
               AND (claimed_by = $1 OR claimed_until IS NULL OR claimed_until < now())
             ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
RETURNING id, idempotency_key, topic, payload, qos, retain, properties
"""  # $1 owner, $2 claim seconds, $3 batch size, $4 ids in flight here

_SENT_SQL = "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[]) AND sent_at IS NULL"  # $1 ids


def encode_payload(payload: bytes | str | dict[str, Any] | list[Any]) -> bytes:
    if isinstance(payload, dict | list):
        payload = json.dumps(payload, separators=(",", ":"))
    if isinstance(payload, str):
        payload = payload.encode()
    return payload


@dataclass(frozen=True)
class OutRow:
    """An outbox row as the relay publishes it."""

    id: int
    key: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[str, Any]


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
    claimed_by: str | None = None,
) -> OutRow | None:
    """Add a message to the outbox inside the caller's transaction. None: that key was enqueued before.

    ``claimed_by`` reserves the row for that relay (it will publish it from memory after the commit).
    """
    validate_publish_topic(topic)
    body = encode_payload(payload)
    row_id = await conn.fetchval(
        _ENQUEUE_SQL, key, topic, body, qos, retain, properties_to_json(properties or {}), correlation_id,
        claimed_by, float(CLAIM_SECONDS),
    )
    if row_id is None:
        return None
    return OutRow(row_id, key, topic, body, qos, retain, dict(properties or {}))


class OutboxRelay:
    """Publishes outbox rows. ``notify()`` after a commit wakes it at once; it also polls for other hubs' rows."""

    def __init__(self, *, store: Store, connection: MqttConnection, metrics: Metrics, owner: str,
                 poll_interval_s: float = 1.0, on_sent: Callable[[list[int]], None] | None = None) -> None:
        self._store = store
        self._conn = connection
        self._metrics = metrics
        self._owner = owner
        self._poll = poll_interval_s
        self._on_sent = on_sent
        self._kick = asyncio.Event()  # something to do: rows handed over in memory, or the table to read
        self._db_due = True  # read the table (poll interval passed, or notify() after someone's commit)
        self._acked_event = asyncio.Event()
        self._idle = asyncio.Event()
        self._in_flight: dict[int, asyncio.Future[None] | None] = {}
        self._acked: list[int] = []
        self._recording: set[int] = set()
        # Rows enqueued by this process, published from memory after their commit (no claim query):
        self._reserved: set[int] = set()  # written inside an open transaction, not committed yet
        self._ready: deque[OutRow] = deque()  # committed, to publish
        self._tasks: list[asyncio.Task[None]] = []
        self._gauge_at = 0.0

    def notify(self) -> None:
        """Rows were committed to the table by someone (any relay may take them): read it now."""
        self._db_due = True
        self._kick.set()

    def reserve(self, row_id: int) -> None:
        """A row of ours is being written: the database poll must not take it (it comes via ``submit``)."""
        self._reserved.add(row_id)

    def unreserve(self, row_ids: Iterable[int]) -> None:
        """Its transaction rolled back: the rows do not exist."""
        self._reserved.difference_update(row_ids)

    def submit(self, rows: Iterable[OutRow]) -> None:
        """Committed rows of ours: publish them from memory."""
        for row in rows:
            self._ready.append(row)
        self._kick.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="kitt[spine].outbox-relay"),
                       asyncio.create_task(self._mark_sent_loop(), name="kitt[spine].outbox-acks")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        # Whatever is still in flight or queued stays claimed by us: the next start publishes it again.
        self._in_flight.clear()
        self._ready.clear()
        self._reserved.clear()

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is left to send and every acknowledgement is recorded. True if in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._idle.clear()
            self.notify()
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return False
            if not self._in_flight and not self._acked and not self._recording and not self._ready:
                return True
            await asyncio.sleep(0.01)
        return False

    async def _run(self) -> None:
        next_poll = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):  # the poll interval passed: a wake-up like any other
                await asyncio.wait_for(self._kick.wait(), max(0.0, next_poll - time.monotonic()))
            self._kick.clear()
            if time.monotonic() >= next_poll:
                # Other instances' rows, rows whose claim expired, ours from before a restart.
                self._db_due = True
                next_poll = time.monotonic() + self._poll
            if not self._conn.connected:
                continue
            try:
                await self._relay_ready()
                while self._db_due:
                    self._db_due = False
                    while await self._relay_batch():
                        await self._relay_ready()
                    await self._relay_ready()
                if not self._in_flight and not self._acked and not self._ready:
                    self._idle.set()
                await self._refresh_gauge()
            except StoreError as exc:
                log.error("outbox relay: database unavailable", error=str(exc))
                await asyncio.sleep(1)

    async def _relay_ready(self) -> None:
        """Publish the committed rows handed over in memory, in order."""
        while self._ready:
            row = self._ready[0]
            if not await self._publish(row):
                return  # disconnected: they stay queued (and claimed by us) for after the reconnect
            self._ready.popleft()
            self._reserved.discard(row.id)

    async def _relay_batch(self) -> bool:
        """Claim and publish one batch from the database; True when there may be more right away."""
        # Rows in flight, acknowledged but not yet recorded, or handed over in memory are ours already.
        busy = [*self._in_flight, *self._acked, *self._recording, *self._reserved]
        rows = await self._store.write_fetch(_CLAIM_SQL, self._owner, float(CLAIM_SECONDS), BATCH, busy)
        if not rows:
            return False
        claimed = len(rows)
        # Checked again now: a row handed over in memory may have committed while the claim was on its way
        # (it is then in one of these sets until its sent_at is committed, and a claim never sees it after).
        rows = [r for r in rows if not self._busy(r["id"])]
        for r in sorted(rows, key=lambda r: r["id"]):
            row = OutRow(r["id"], r["idempotency_key"], r["topic"], bytes(r["payload"]), r["qos"], r["retain"],
                         properties_from_json(r["properties"]))
            if not await self._publish(row):
                return False  # the rest stay claimed by us and go out after the reconnect
        return claimed == BATCH

    def _busy(self, row_id: int) -> bool:
        return (row_id in self._in_flight or row_id in self._reserved or row_id in self._recording
                or row_id in self._acked)

    async def _publish(self, row: OutRow) -> bool:
        """Publish one row with its idempotency key; False when the connection is gone."""
        props = dict(row.properties)
        user = [tuple(p) for p in props.pop("user_property", [])]
        user = [p for p in user if p[0] != "id"] + [("id", row.key)]
        try:
            fut = await self._conn.send(row.topic, row.payload, qos=row.qos, retain=row.retain,
                                        user_property=user, **props)
        except SpineError:
            return False
        except Exception:  # a row gmqtt cannot encode must not stop the relay; it stays claimed a while
            log.exception("outbox: cannot publish row; retried after its claim expires", row=row.id)
            return True
        self._in_flight[row.id] = fut
        if fut is None:
            self._ack(row.id, None)
        else:
            fut.add_done_callback(lambda f, rid=row.id: self._ack(rid, f))
        return True

    def _ack(self, row_id: int, fut: asyncio.Future[None] | None) -> None:
        if row_id not in self._in_flight:
            return  # stopped meanwhile
        del self._in_flight[row_id]
        if fut is not None and (fut.cancelled() or fut.exception() is not None):
            # The broker session was lost: the row is still claimed by us and no longer in flight, so the
            # next claim takes it again.
            log.warning("outbox: publish lost with the broker session; sending again", row=row_id)
            self.notify()
            return
        self._acked.append(row_id)
        self._acked_event.set()

    async def _mark_sent_loop(self) -> None:
        """Batches acknowledgements into one UPDATE (written while the next ones arrive)."""
        while True:
            await self._acked_event.wait()
            self._acked_event.clear()
            acked, self._acked = self._acked, []
            if not acked:
                continue
            self._recording = set(acked)
            try:
                await self._store.write(_SENT_SQL, acked)
            except StoreError as exc:
                # Keep them for the next try: an acknowledged row not marked sent would be published twice.
                log.error("outbox: cannot record acknowledgements", error=str(exc), rows=len(acked))
                self._acked = acked + self._acked
                self._recording = set()
                await asyncio.sleep(1)
                self._acked_event.set()
                continue
            self._recording = set()
            self._metrics.mqtt_published.labels(topic_class="outbox").inc(len(acked))
            if self._on_sent is not None:
                self._on_sent(acked)
            if not self._in_flight and not self._acked and not self._ready and not self._db_due:
                self._idle.set()

    async def _refresh_gauge(self) -> None:
        now = time.monotonic()
        if now - self._gauge_at < GAUGE_INTERVAL_S:
            return
        self._gauge_at = now
        count = await self._store.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        self._metrics.outbox_pending.set(count or 0)

    async def prune(self, retention_s: int) -> int:
        status = await self._store.write(
            "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1)",
            float(retention_s),
        )
        return int(status.split()[-1])
