"""The transactional outbox: a handler writes its command in the same transaction as its state change;
the relay publishes rows at their QoS in id order, marks them sent on PUBACK/PUBCOMP, and resumes after a
reconnect or restart. Every message carries its idempotency key as the MQTT 5 user property ``id``.

The relay is pipelined: it keeps up to the broker's window of publishes in flight while it claims the next
rows, and acknowledgements are marked sent in batches (one UPDATE per batch, not one per row).

QoS 2 rows are relayed exactly once on the wire, also across a SIGKILL of the hub (docs/spine.md, "Packet ids
on the outbox rows"): each row's packet id is written (with the client id, i.e. the broker session) before
its PUBLISH leaves, ``released`` before its PUBREL leaves, ``sent_at`` after its PUBCOMP; the id stays taken
until ``sent_at`` is committed. The next process of the same client id finishes each handshake where it
stopped (``take_back_held``) instead of publishing the row again under a new id. QoS 0/1 rows stay
at-least-once (a QoS 1 resend is a new delivery by definition), with the same ``id`` every time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import structlog
from gmqtt import Message

from hub.aio import wait_event
from hub.errors import SpineError, StoreError
from hub.metrics import Metrics
from hub.spine.batching import RetryingBatches
from hub.spine.client import HeldPublish, MqttConnection
from hub.spine.inbox import properties_from_json, properties_to_json
from hub.spine.topics import validate_publish_topic
from hub.store import Store
from hub.store.appends import OutboxAppend

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

# Before the PUBLISHes leave: each row's packet id in this session. No other unsent row carries one of these
# ids: an id goes back to the pool only once its row is sent or no longer carries it (``_CLEAR_SQL``).
# ANY + array_position, not a join with unnest: the generic plan of such a join hashed a sequential scan of the
# whole table. Committed without waiting for the WAL flush, like ``_RELEASED_SQL`` and for the same reason: lost
# only in a PostgreSQL crash, after which the row is published afresh under a new id while the broker may still
# hold it under the old one (released at the first connect): at worst a duplicate, never a loss.
_STAMP_SQL = """
UPDATE outbox SET packet_id = ($2::int[])[array_position($1::bigint[], id)], packet_session = $3, released = false
WHERE id = ANY($1::bigint[])
"""  # $1 ids, $2 packet ids, $3 client id

# A publish that will not complete under its id (the broker lost the session, or it never left): the row stops
# carrying the id, and only then may the id carry another row. Unless the row was stamped again meanwhile.
_CLEAR_SQL = """
UPDATE outbox SET packet_id = NULL, released = false
WHERE id = ANY($1::bigint[]) AND sent_at IS NULL AND packet_session = $3
  AND packet_id = ($2::int[])[array_position($1::bigint[], id)]
"""  # $1 ids, $2 their packet ids, $3 client id


# After a PUBREC, before its PUBREL. Like the stamp, committed without waiting for the WAL flush (``flush=False``):
# safe to lose in a PostgreSQL crash, never in a hub crash (it is committed before the PUBREL leaves). The row then
# looks unreleased and its PUBLISH goes out again under the same id: a broker that already completed it delivers a
# second copy, none is lost. It can never be mistaken for another message under that id: the id is reused only
# after this row's ``sent_at`` commit, which is synchronous and flushes this too.
_RELEASED_SQL = "UPDATE outbox SET released = true WHERE id = ANY($1::bigint[])"  # $1 ids


# Start-up, before connecting: our rows whose handshake the previous process began in this session.
_HELD_SQL = """
UPDATE outbox SET claimed_by = $1, claimed_until = now() + make_interval(secs => $2), attempts = attempts + 1
WHERE sent_at IS NULL AND packet_session = $1 AND packet_id IS NOT NULL
  AND (claimed_by = $1 OR claimed_until IS NULL OR claimed_until < now())
RETURNING id, idempotency_key, topic, payload, qos, retain, properties, packet_id, released
"""  # $1 owner (= client id), $2 claim seconds


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
    packet_id: int | None = None  # chosen and written with the row (``Spine.appending``): published without a stamp

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> OutRow:
        return cls(r["id"], r["idempotency_key"], r["topic"], bytes(r["payload"]), r["qos"], r["retain"],
                   properties_from_json(r["properties"]))

    def publish_properties(self) -> dict[str, Any]:
        """Its MQTT 5 properties as gmqtt takes them, the idempotency key as the user property ``id``."""
        props = dict(self.properties)
        user = [tuple(p) for p in props.pop("user_property", [])]
        props["user_property"] = [p for p in user if p[0] != "id"] + [("id", self.key)]
        return props


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
    row = new_row(0, topic=topic, payload=payload, key=key, qos=qos, retain=retain, properties=properties)
    row_id = await conn.fetchval(
        _ENQUEUE_SQL, key, topic, row.payload, qos, retain, properties_to_json(row.properties), correlation_id,
        claimed_by, float(CLAIM_SECONDS),
    )
    if row_id is None:
        return None
    return replace(row, id=row_id)


def new_row(row_id: int, *, topic: str, payload: bytes | str | dict[str, Any] | list[Any], key: str, qos: int = 2,
            retain: bool = False, properties: dict[str, Any] | None = None) -> OutRow:
    """A row as it will be written (the topic checked, the payload encoded)."""
    validate_publish_topic(topic)
    return OutRow(row_id, key, topic, encode_payload(payload), qos, retain, dict(properties or {}))


def as_append(row: OutRow, *, correlation_id: str | None, claimed_by: str | None) -> OutboxAppend:
    """The row for a grouped block's deferred INSERT (``hub.store.appends``)."""
    return (row.id, row.key, row.topic, row.payload, row.qos, row.retain, properties_to_json(row.properties),
            correlation_id, claimed_by, None, None)


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
        self._idle = asyncio.Event()
        self._in_flight: dict[int, asyncio.Future[None] | None] = {}
        # Acknowledged rows, until their sent_at is written (an acknowledged row not marked sent would be
        # published twice: a failed write is retried, never dropped).
        self._acks: RetryingBatches[int] = RetryingBatches(
            "record acknowledgements", lambda rows: self._store.write(_SENT_SQL, rows), self._recorded_sent)
        # Rows enqueued by this process, published from memory after their commit (no claim query):
        self._reserved: set[int] = set()  # written inside an open transaction, not committed yet
        self._ready: deque[OutRow] = deque()  # committed, to publish
        self._tasks: list[asyncio.Task[None]] = []
        self._gauge_at = 0.0
        # QoS 2 rows published under an id we chose: mid <-> row, until the row's sent_at is committed.
        self._mid_rows: dict[int, int] = {}
        self._row_mids: dict[int, int] = {}
        # PUBRECs, whose PUBREL waits until `released` is written (the broker holds the message meanwhile).
        self._releases: RetryingBatches[tuple[int, Callable[[], None]]] = RetryingBatches(
            "record PUBRECs", lambda batch: self._store.write(_RELEASED_SQL, [row for row, _ in batch],
                                                                  flush=False),
            self._send_pubrels)
        # (row, mid) whose id is cleared from the row before the id goes back to the pool.
        self._retired: RetryingBatches[tuple[int, int]] = RetryingBatches(
            "clear packet ids",
            lambda batch: self._store.write(_CLEAR_SQL, [row for row, _ in batch], [mid for _, mid in batch],
                                            self._owner),
            lambda batch: self._conn.free_mids([mid for _, mid in batch]))
        connection.set_pubrec_hook(self._on_pubrec)

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

    def take_ids(self, count: int) -> list[int]:
        """Packet ids for QoS 2 rows that a caller writes with their ids (``Spine.appending``), so that the relay
        publishes them without a stamp of its own: at most what the window has free now (none: they are
        stamped as usual). Each is then given back (``give_back_ids``), left in doubt (``ids_in_doubt``), or
        carried by its submitted row."""
        free = self._conn.window.free
        return self._conn.allocate_mids(min(count, free)) if count > 0 and free > 0 else []

    def give_back_ids(self, mids: list[int]) -> None:
        """Ids of rows that were not written."""
        self._conn.free_mids(mids)

    def ids_in_doubt(self, pairs: list[tuple[int, int]]) -> None:
        """(row, id) whose write may or may not have committed: the ids stay taken until cleared from the rows."""
        self._retire(pairs)

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
                       asyncio.create_task(self._acks.run(), name="kitt[spine].outbox-acks"),
                       asyncio.create_task(self._releases.run(), name="kitt[spine].outbox-releases"),
                       asyncio.create_task(self._retired.run(), name="kitt[spine].outbox-retired-ids")]

    async def take_back_held(self) -> int:
        """Before the first connect: the rows our previous process was publishing, to finish in its session.

        They are in flight from now on: the connection sends their PUBREL (released) or their PUBLISH again
        with the same id and DUP, and their PUBCOMP marks them sent. If the broker lost the session, their
        futures fail and they are published afresh.
        """
        rows = await self._store.write_fetch(_HELD_SQL, self._owner, float(CLAIM_SECONDS))
        held: list[HeldPublish] = []
        by_mid: dict[int, int] = {}
        for r in sorted(rows, key=lambda r: r["id"]):
            mid = r["packet_id"]
            if mid in by_mid or r["qos"] != 2:
                # Cannot happen with ids held until sent_at commits; if it does, that row is sent afresh.
                continue
            row = OutRow.from_record(r)
            by_mid[mid] = row.id
            held.append(HeldPublish(mid, bool(r["released"]), self._message(row)))
        futures = self._conn.resume(held)
        for mid, row_id in by_mid.items():
            self._track(row_id, mid, futures[mid])
        if held:
            log.info("outbox: finishing the publishes of the previous run", rows=len(held))
        return len(held)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        # Whatever is still in flight or queued stays claimed by us: the next start publishes it again.
        self._in_flight.clear()
        self._ready.clear()
        self._reserved.clear()
        self._releases.clear()
        # The next process of this client id takes the rows' ids back from the table (take_back_held).
        retired = [mid for _, mid in [*self._retired.queued, *self._retired.writing]]
        self._conn.free_mids([*self._mid_rows, *retired])
        self._retired.clear()
        self._mid_rows.clear()
        self._row_mids.clear()

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is left to send and every acknowledgement is recorded. True if in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._idle.clear()
            self.notify()
            if not await wait_event(self._idle, max(0.01, deadline - time.monotonic())):
                return False
            if self._nothing_to_send() and not self._acks.writing:
                return True
            await asyncio.sleep(0.01)
        return False

    async def _run(self) -> None:
        next_poll = time.monotonic()
        while True:
            # The poll interval passing is a wake-up like any other.
            await wait_event(self._kick, max(0.0, next_poll - time.monotonic()))
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
                if self._nothing_to_send():
                    self._idle.set()
                await self._refresh_gauge()
            except StoreError as exc:
                log.error("outbox relay: database unavailable", error=str(exc))
                await asyncio.sleep(1)

    async def _relay_ready(self) -> None:
        """Publish the committed rows handed over in memory, in order."""
        while self._ready:
            rows = [self._ready[i] for i in range(min(len(self._ready), BATCH))]
            done = await self._publish_rows(rows)
            for _ in range(done):
                row = self._ready.popleft()
                self._reserved.discard(row.id)
            if done < len(rows):
                return  # disconnected: they stay queued (and claimed by us) for after the reconnect

    async def _relay_batch(self) -> bool:
        """Claim and publish one batch from the database; True when there may be more right away."""
        rows = await self._store.write_fetch(_CLAIM_SQL, self._owner, float(CLAIM_SECONDS), BATCH,
                                             list(self._ours()))
        if not rows:
            return False
        claimed = len(rows)
        # Checked again now: a row handed over in memory may have committed while the claim was on its way
        # (it is then in one of these sets until its sent_at is committed, and a claim never sees it after).
        ours = self._ours()
        rows = [r for r in rows if r["id"] not in ours]
        out = [OutRow.from_record(r) for r in sorted(rows, key=lambda r: r["id"])]
        if await self._publish_rows(out) < len(out):
            return False  # the rest stay claimed by us and go out after the reconnect
        return claimed == BATCH

    async def _publish_rows(self, rows: list[OutRow]) -> int:
        """Publish rows in order; returns how many went out (fewer: the connection is gone)."""
        done = 0
        while done < len(rows):
            if rows[done].packet_id is not None:
                if not self._publish_stamped(rows[done]):
                    return done
                done += 1
                continue
            if rows[done].qos < 2:
                if not await self._publish(rows[done]):
                    return done
                done += 1
                continue
            run = 0
            while done + run < len(rows) and rows[done + run].qos == 2:
                run += 1
            sent = await self._publish_qos2(rows[done:done + run])
            done += sent
            if sent < run:
                return done
        return done

    async def _publish_qos2(self, rows: list[OutRow]) -> int:
        """QoS 2 rows: choose their packet ids, persist them, then publish under exactly those ids."""
        done = 0
        window = self._conn.window
        while done < len(rows):
            if not self._conn.connected:
                return done
            if window.full():
                await window.wait()
                continue
            mids = self._conn.allocate_mids(min(len(rows) - done, window.free))
            if not mids:
                # The window counts free slots but gmqtt's pool has none (ids of SUBSCRIBEs): a moment.
                await asyncio.sleep(0.01)
                continue
            chunk = rows[done:done + len(mids)]
            try:
                await self._store.write(_STAMP_SQL, [r.id for r in chunk], mids, self._owner, flush=False)
            except StoreError:
                self._retire([(r.id, mid) for r, mid in zip(chunk, mids, strict=True)])  # committed or not
                raise
            except BaseException:
                self._conn.free_mids(mids)  # stopping: the next process reads the ids from the rows
                raise
            for i, (row, mid) in enumerate(zip(chunk, mids, strict=True)):
                if not self._publish_under(row, mid):
                    self._retire([(r.id, m) for r, m in zip(chunk[i:], mids[i:], strict=True)])
                    return done
                done += 1
        return done

    def _publish_stamped(self, row: OutRow) -> bool:
        """A QoS 2 row written with its packet id: published under it (it holds its window slot since
        ``take_ids``). False when there is no client: the row is then stamped afresh, once its id is cleared."""
        assert row.packet_id is not None
        if self._publish_under(row, row.packet_id):
            return True
        self._retire([(row.id, row.packet_id)])
        self._unstamp(row)
        return False

    def _publish_under(self, row: OutRow, mid: int) -> bool:
        """PUBLISH a row whose packet id is written on it, under that id. False when there is no client (the
        caller retires the id); a row gmqtt cannot encode is retired here and counts as done."""
        try:
            fut = self._conn.publish_with_mid(mid, self._message(row))
        except SpineError:
            return False
        except Exception:  # a row gmqtt cannot encode must not stop the relay; it stays claimed a while
            log.exception("outbox: cannot publish row; retried after its claim expires", row=row.id)
            self._retire([(row.id, mid)])
            return True
        self._track(row.id, mid, fut)
        return True

    def _unstamp(self, row: OutRow) -> None:
        for i, queued in enumerate(self._ready):
            if queued.id == row.id:
                self._ready[i] = replace(row, packet_id=None)
                return

    @staticmethod
    def _message(row: OutRow) -> Message:
        return Message(row.topic, row.payload, qos=row.qos, retain=row.retain, **row.publish_properties())

    def _track(self, row_id: int, mid: int, fut: asyncio.Future[None]) -> None:
        self._in_flight[row_id] = fut
        self._mid_rows[mid] = row_id
        self._row_mids[row_id] = mid
        fut.add_done_callback(lambda f, rid=row_id: self._ack(rid, f))

    def _untrack(self, row_ids: list[int]) -> list[int]:
        mids = [mid for mid in (self._row_mids.pop(row_id, None) for row_id in row_ids) if mid is not None]
        for mid in mids:
            self._mid_rows.pop(mid, None)
        return mids

    def _retire(self, pairs: list[tuple[int, int]]) -> None:
        """These rows will not complete under these ids: the ids stay taken until the rows no longer carry them."""
        self._conn.park_mids([mid for _, mid in pairs])
        self._retired.add(pairs)

    def _on_pubrec(self, mid: int, send_pubrel: Callable[[], None]) -> bool:
        """PUBREC for one of our rows: the PUBREL waits until ``released`` is committed."""
        row_id = self._mid_rows.get(mid)
        if row_id is None:
            return False
        self._releases.add([(row_id, send_pubrel)])
        return True

    @staticmethod
    def _send_pubrels(batch: list[tuple[int, Callable[[], None]]]) -> None:
        for _row_id, send_pubrel in batch:
            send_pubrel()

    def _ours(self) -> set[int]:
        """Rows in flight, acknowledged but not yet recorded, or handed over in memory: never claimed again."""
        return {*self._in_flight, *self._acks.queued, *self._acks.writing, *self._reserved}

    def _nothing_to_send(self) -> bool:
        """No row in flight, waiting to be published from memory, or acknowledged and not yet being recorded."""
        return not self._in_flight and not self._acks.queued and not self._ready

    async def _publish(self, row: OutRow) -> bool:
        """Publish one row with its idempotency key; False when the connection is gone."""
        try:
            fut = await self._conn.send(row.topic, row.payload, qos=row.qos, retain=row.retain,
                                        **row.publish_properties())
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
            # next claim takes it again (with a new packet id: the broker knows none of the old ones).
            self._retire([(row_id, mid) for mid in self._untrack([row_id])])
            log.warning("outbox: publish lost with the broker session; sending again", row=row_id)
            self.notify()
            return
        self._acks.add([row_id])

    def _recorded_sent(self, acked: list[int]) -> None:
        self._conn.free_mids(self._untrack(acked))  # sent_at is committed: the ids may carry other rows now
        self._metrics.mqtt_published.labels(topic_class="outbox").inc(len(acked))
        if self._on_sent is not None:
            self._on_sent(acked)
        if self._nothing_to_send() and not self._db_due:
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
