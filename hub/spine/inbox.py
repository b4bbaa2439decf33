"""The inbox: inbound QoS 1/2 messages committed before they are acknowledged.

Inserts from concurrent messages are group-committed (one multi-row INSERT per batch), so the broker's
in-flight window costs one round trip instead of one each. A row is ``pending`` until its handler marks it
done in the same transaction as its effects.

Who works on a pending row: the instance that inserted it (``claimed_by`` = its MQTT client id, for
``CLAIM_SECONDS``). After a crash, the same client id takes back its own pending rows at start-up
(``claim_own``), before it connects, so the broker's redeliveries meet rows already being worked on; another
instance takes a row over only once its claim expired (``claim_stale``). A redelivered message whose row is
still pending and not being worked on here is taken over at once (``Added.takeover``). Two workers racing
on one row is harmless: the conditional ``done`` UPDATE lets exactly one transaction commit its effects.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from hub.errors import StoreError
from hub.spine.batching import GroupCommitter, Item
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

# A key that was seen before: take the row over if it is still pending and nobody else holds a live claim.
_TAKEOVER_SQL = """
UPDATE inbox SET claimed_by = $2, claimed_until = now() + make_interval(secs => $3)
WHERE dedupe_key = ANY($1::text[]) AND state = 'pending'
  AND (claimed_by = $2 OR claimed_until IS NULL OR claimed_until < now())
  AND id <> ALL($4::bigint[])
RETURNING id, dedupe_key, topic, payload, properties, qos
"""  # $1 keys, $2 owner, $3 claim seconds, $4 ids being worked on here

_MARK_DONE_SQL = """UPDATE inbox SET state = $2, finished_at = now(), error = $3, attempts = attempts + 1
                    WHERE id = $1 AND state = 'pending' RETURNING id"""  # $1 id, $2 state, $3 error

_MARK_MANY_SQL = """
UPDATE inbox SET state = u.state, finished_at = now(), error = u.error, attempts = attempts + 1
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u(id, state, error)
WHERE inbox.id = u.id AND inbox.state = 'pending' RETURNING inbox.id
"""  # $1 ids, $2 states, $3 errors

_CLAIM_SQL = """
UPDATE inbox SET claimed_by = $1, claimed_until = now() + make_interval(secs => $2)
WHERE id IN (SELECT id FROM inbox WHERE state = 'pending' AND id <> ALL($4::bigint[]) AND ({where})
             ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
RETURNING id, dedupe_key, topic, payload, properties, qos
"""  # $1 owner, $2 claim seconds, $3 limit, $4 ids being worked on here, $5 (stale only) min age seconds

_OWN = "claimed_by = $1"
_STALE = ("claimed_until IS NULL OR claimed_until < now() "
          "OR (claimed_by = $1 AND received_at < now() - make_interval(secs => $5))")


@dataclass(frozen=True)
class InboxRow:
    id: int
    dedupe_key: str
    topic: str
    payload: bytes
    properties: dict[str, Any]
    qos: int


@dataclass(frozen=True)
class Added:
    """What ``Inbox.add`` did: a new row (``row_id``), a redelivery to take over (``takeover``), or neither."""

    row_id: int | None = None
    takeover: InboxRow | None = None


def _enc(x: Any) -> Any:
    return {"b64": base64.b64encode(x).decode()} if isinstance(x, bytes) else x


def _dec(x: Any) -> Any:
    return base64.b64decode(x["b64"]) if isinstance(x, dict) and set(x) == {"b64"} else x


def properties_to_json(properties: dict[str, Any]) -> str:
    """MQTT properties as JSON text (bytes such as correlation data as base64)."""
    return json.dumps({k: [_enc(x) for x in v] if isinstance(v, list) else _enc(v) for k, v in properties.items()})


def properties_from_json(data: dict[str, Any]) -> dict[str, Any]:
    return {k: [_dec(x) for x in v] if isinstance(v, list) else _dec(v) for k, v in data.items()}


def _row(r: asyncpg.Record) -> InboxRow:
    return InboxRow(r["id"], r["dedupe_key"], r["topic"], bytes(r["payload"]), properties_from_json(r["properties"]),
                    r["qos"])


_Item = Item  # (dedupe_key, topic, payload, properties json, qos, future of Added)


class _Finisher(GroupCommitter):
    """Marks rows finished outside a handler transaction, whatever queued meanwhile in one UPDATE."""

    task_name = "kitt[spine].inbox-finisher"
    what = "inbox finisher"

    def __init__(self, store: Store) -> None:
        super().__init__(max_batch=512)
        self._store = store

    async def finish(self, inbox_id: int, state: str, error: str | None) -> bool:
        return await self._submit(inbox_id, state, error)

    async def _commit(self, batch: list[Item]) -> None:
        first: dict[int, Item] = {}
        for item in batch:
            first.setdefault(item[0], item)
        uniq = list(first.values())
        try:
            rows = await self._store.write_fetch(_MARK_MANY_SQL, [i[0] for i in uniq], [i[1] for i in uniq],
                                                 [i[2] for i in uniq])
        except StoreError as exc:
            self._fail(batch, exc)
            return
        done = {r["id"] for r in rows}
        for item in batch:
            # Only the first of two marks of one row did it.
            self._resolve(item, item is first[item[0]] and item[0] in done)


class Inbox(GroupCommitter):
    """The group-commit writer plus the set of rows this instance is working on (``working``)."""

    task_name = "kitt[spine].inbox-writer"
    what = "inbox"

    def __init__(self, *, store: Store, owner: str, max_batch: int = 256) -> None:
        super().__init__(max_batch=max_batch)
        self._store = store
        self._owner = owner
        self.working: set[int] = set()
        self._finisher = _Finisher(store)

    async def start(self) -> None:
        await super().start()
        await self._finisher.start()

    async def stop(self) -> None:
        await super().stop()
        await self._finisher.stop()

    def release(self, row_id: int) -> None:
        """This instance stopped working on the row (finished, or gave up until the next claim)."""
        self.working.discard(row_id)

    async def add(self, *, dedupe_key: str, topic: str, payload: bytes, properties: dict[str, Any],
                  qos: int) -> Added:
        """Commit the message (raises ``StoreError`` if it did not commit; then it must not be acknowledged)."""
        return await self._submit(dedupe_key, topic, payload, properties_to_json(properties), qos)

    async def _commit(self, batch: list[_Item]) -> None:
        # Two copies of one key inside a batch: only the first may insert it; the others are duplicates.
        first: dict[str, _Item] = {}
        copies: list[_Item] = []
        for item in batch:
            if item[0] in first:
                copies.append(item)
            else:
                first[item[0]] = item
        uniq = list(first.values())
        try:
            rows = await self._store.write_fetch(
                _INSERT_SQL,
                [i[0] for i in uniq], [i[1] for i in uniq], [i[2] for i in uniq], [i[3] for i in uniq],
                [i[4] for i in uniq], self._owner, float(CLAIM_SECONDS),
            )
            ids = {r["dedupe_key"]: r["id"] for r in rows}
            seen_before = [i[0] for i in uniq if i[0] not in ids]
            taken: dict[str, InboxRow] = {}
            if seen_before:
                taken = {r["dedupe_key"]: _row(r) for r in await self._store.write_fetch(
                    _TAKEOVER_SQL, seen_before, self._owner, float(CLAIM_SECONDS), list(self.working))}
        except StoreError as exc:
            self._fail(batch, exc)
            return
        # Marked as worked on before any caller resumes: a concurrent claim never hands the row out twice.
        self.working.update(ids.values())
        self.working.update(r.id for r in taken.values())
        for key, *_rest, fut in uniq:
            if not fut.done():
                fut.set_result(Added(row_id=ids.get(key), takeover=taken.get(key)))
        for *_rest, fut in copies:
            if not fut.done():
                fut.set_result(Added())

    async def finish(self, inbox_id: int, *, state: str = "done", error: str | None = None,
                     conn: asyncpg.Connection | None = None) -> bool:
        """Mark a row finished; True if this call did it (False: someone already had).

        Inside ``conn``'s transaction when given; otherwise group-committed with other marks.
        """
        if conn is not None:
            return await conn.fetchval(_MARK_DONE_SQL, inbox_id, state, error) is not None
        if not self._finisher.running:  # before start / after stop (recovery paths): on its own
            return await self._store.write_returning(_MARK_DONE_SQL, inbox_id, state, error) is not None
        return await self._finisher.finish(inbox_id, state, error)

    async def claim_own(self, limit: int = 1000) -> list[InboxRow]:
        """Pending rows under this client id that nobody here works on: left by our previous process."""
        return await self._claim(_CLAIM_SQL.format(where=_OWN), limit)

    async def claim_stale(self, *, min_age_s: float, limit: int = 1000) -> list[InboxRow]:
        """Rows whose claim expired (another instance died), and our own that failed and are ``min_age_s`` old."""
        return await self._claim(_CLAIM_SQL.format(where=_STALE), limit, float(min_age_s))

    async def _claim(self, sql: str, limit: int, *extra: Any) -> list[InboxRow]:
        rows = await self._store.write_fetch(sql, self._owner, float(CLAIM_SECONDS), limit, list(self.working),
                                             *extra)
        claimed = sorted((_row(r) for r in rows), key=lambda r: r.id)
        claimed = [r for r in claimed if r.id not in self.working]
        self.working.update(r.id for r in claimed)
        return claimed

    async def prune(self, retention_s: int) -> int:
        status = await self._store.write(
            "DELETE FROM inbox WHERE state <> 'pending' AND finished_at < now() - make_interval(secs => $1)",
            float(retention_s),
        )
        return int(status.split()[-1])
