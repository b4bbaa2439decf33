"""The inbox: inbound QoS 1/2 messages committed before they are acknowledged.

Inserts from concurrent messages are group-committed (one multi-row INSERT per batch), so the broker's
in-flight window costs one round trip instead of one each. A row is ``pending`` until its handler marks it
done in the same transaction as its effects; pending rows are resumed after a crash.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from hub.errors import StoreError
from hub.store import Store

log = structlog.get_logger("kitt.spine.inbox")

CLAIM_SECONDS = 300

_INSERT_SQL = """
INSERT INTO inbox (dedupe_key, topic, payload, properties, qos, claimed_by, claimed_until)
SELECT k, t, p, pr::jsonb, q, $6, now() + make_interval(secs => $7)
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::smallint[]) AS u(k, t, p, pr, q)
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING id, dedupe_key
"""  # $1 keys, $2 topics, $3 payloads, $4 properties (json text), $5 qos, $6 claimed_by, $7 claim seconds

_MARK_DONE_SQL = """UPDATE inbox SET state = $2, finished_at = now(), error = $3, attempts = attempts + 1
                    WHERE id = $1 AND state = 'pending' RETURNING id"""  # $1 id, $2 state, $3 error


@dataclass(frozen=True)
class InboxRow:
    id: int
    dedupe_key: str
    topic: str
    payload: bytes
    properties: dict[str, Any]
    qos: int


def _enc(x: Any) -> Any:
    return {"b64": base64.b64encode(x).decode()} if isinstance(x, bytes) else x


def _dec(x: Any) -> Any:
    return base64.b64decode(x["b64"]) if isinstance(x, dict) and set(x) == {"b64"} else x


def properties_to_json(properties: dict[str, Any]) -> str:
    """MQTT properties as JSON text (bytes such as correlation data as base64)."""
    return json.dumps({k: [_enc(x) for x in v] if isinstance(v, list) else _enc(v) for k, v in properties.items()})


def properties_from_json(data: dict[str, Any]) -> dict[str, Any]:
    return {k: [_dec(x) for x in v] if isinstance(v, list) else _dec(v) for k, v in data.items()}


class Inbox:
    def __init__(self, *, store: Store, owner: str, max_batch: int = 256) -> None:
        self._store = store
        self._owner = owner
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[str, str, bytes, str, int, asyncio.Future[int | None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._writer(), name="kitt[spine].inbox-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self._queue.empty():
            *_, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(StoreError("inbox stopped before commit"))

    async def add(self, *, dedupe_key: str, topic: str, payload: bytes, properties: dict[str, Any],
                  qos: int) -> int | None:
        """Commit the message; return its row id, or None when the key was seen before (a redelivery)."""
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((dedupe_key, topic, payload, properties_to_json(properties), qos, fut))
        return await fut

    async def _writer(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[str, str, bytes, str, int, asyncio.Future[int | None]]]) -> None:
        # Two copies of one key inside a batch: only the first may claim it.
        seen: dict[str, list[asyncio.Future[int | None]]] = {}
        uniq = []
        for item in batch:
            if item[0] in seen:
                seen[item[0]].append(item[5])
                continue
            seen[item[0]] = []
            uniq.append(item)
        try:
            rows = await self._store.write_fetch(
                _INSERT_SQL,
                [i[0] for i in uniq], [i[1] for i in uniq], [i[2] for i in uniq], [i[3] for i in uniq],
                [i[4] for i in uniq], self._owner, float(CLAIM_SECONDS),
            )
        except StoreError as exc:
            for item in batch:
                if not item[5].done():
                    item[5].set_exception(exc)
            return
        ids = {r["dedupe_key"]: r["id"] for r in rows}
        for key, _t, _p, _pr, _q, fut in uniq:
            if not fut.done():
                fut.set_result(ids.get(key))
            for dup in seen[key]:
                if not dup.done():
                    dup.set_result(None)

    async def finish(self, inbox_id: int, *, state: str = "done", error: str | None = None,
                     conn: asyncpg.Connection | None = None) -> bool:
        """Mark a row finished; True if this call did it (False: someone already had)."""
        if conn is not None:
            return await conn.fetchval(_MARK_DONE_SQL, inbox_id, state, error) is not None
        row = await self._store.write_returning(_MARK_DONE_SQL, inbox_id, state, error)
        return row is not None

    async def claim_pending(self, limit: int = 500) -> list[InboxRow]:
        """Rows left pending by this instance (a crash) or by one whose claim expired."""
        rows = await self._store.write_fetch(
            """UPDATE inbox SET claimed_by = $1, claimed_until = now() + make_interval(secs => $2)
               WHERE id IN (SELECT id FROM inbox WHERE state = 'pending'
                              AND (claimed_by = $1 OR claimed_until IS NULL OR claimed_until < now())
                            ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
               RETURNING id, dedupe_key, topic, payload, properties, qos""",  # $1 owner, $2 secs, $3 limit
            self._owner, float(CLAIM_SECONDS), limit,
        )
        rows = sorted(rows, key=lambda r: r["id"])
        return [InboxRow(r["id"], r["dedupe_key"], r["topic"], bytes(r["payload"]),
                         properties_from_json(r["properties"]), r["qos"]) for r in rows]

    async def prune(self, retention_s: int) -> int:
        status = await self._store.write(
            "DELETE FROM inbox WHERE state <> 'pending' AND finished_at < now() - make_interval(secs => $1)",
            float(retention_s),
        )
        return int(status.split()[-1])
