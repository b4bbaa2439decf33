"""Audit events the spine writes itself (rejections, handler failures), group-committed.

A flood of bad input must not turn into one transaction per message: concurrent events go into one
multi-row INSERT. Each caller still awaits its own commit (a failed write raises ``StoreError``).
"""

from __future__ import annotations

import json
from typing import Any

from hub.errors import StoreError
from hub.spine.batching import GroupCommitter, Item
from hub.store import Store

_INSERT_SQL = """
INSERT INTO events (actor, kind, subject, correlation_id, body)
SELECT a, k, s, c, b::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u(a, k, s, c, b)
"""  # $1 actors, $2 kinds, $3 subjects, $4 correlation ids, $5 bodies (json text)

class AuditWriter(GroupCommitter):
    task_name = "kitt[spine].audit-writer"
    what = "audit writer"

    def __init__(self, *, store: Store, max_batch: int = 512) -> None:
        super().__init__(max_batch=max_batch)
        self._store = store

    async def record(self, kind: str, *, actor: str, subject: str | None = None, correlation_id: str | None = None,
                     body: dict[str, Any] | None = None) -> None:
        if not self.running:
            raise StoreError("audit writer is not running")
        await self._submit(actor, kind, subject, correlation_id, json.dumps(body or {}))

    async def _commit(self, batch: list[Item]) -> None:
        try:
            await self._store.write(_INSERT_SQL, *([item[i] for item in batch] for i in range(5)))
        except StoreError as exc:
            self._fail(batch, exc)
            return
        for item in batch:
            self._resolve(item)
