"""The durable side of confirmation dialogues: the ``voice_sessions`` rows (migration 0025_voice.sql)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from hub.store import Store

_OPEN_SQL = """INSERT INTO voice_sessions (site, session_id, confirmation_id, custom_data, lang)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (site, session_id) DO UPDATE
                   SET confirmation_id = EXCLUDED.confirmation_id, custom_data = EXCLUDED.custom_data,
                       state = 'open', confirm_deadline = NULL, end_reason = NULL, ended_at = NULL"""
# $1 site, $2 session id, $3 confirmation id, $4 customData, $5 lang

_DEADLINE_SQL = """UPDATE voice_sessions SET confirm_deadline = now() + make_interval(secs => $3)
                   WHERE site = $1 AND session_id = $2 AND state = 'open'"""  # $1 site, $2 session, $3 seconds

_CLOSE_SQL = """UPDATE voice_sessions SET state = 'ended', end_reason = $3, ended_at = now()
                WHERE site = $1 AND session_id = $2 AND state = 'open'"""  # $1 site, $2 session, $3 reason

_LIST_OPEN_SQL = """SELECT site, session_id, confirmation_id, custom_data, lang,
                           confirm_deadline IS NOT NULL AND confirm_deadline <= now() AS deadline_passed
                    FROM voice_sessions WHERE state = 'open' ORDER BY created_at"""


@dataclass(frozen=True)
class OpenSession:
    site: str
    session_id: str
    confirmation_id: str
    custom_data: str | None
    lang: str | None
    deadline_passed: bool


class VoiceSessions:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def open(self, conn: asyncpg.Connection, *, site: str, session_id: str, confirmation_id: str,
                   custom_data: str | None, lang: str | None) -> None:
        """Inside the transaction that opened the confirmation: both exist, or neither."""
        await conn.execute(_OPEN_SQL, site, session_id, confirmation_id, custom_data, lang)

    async def arm_deadline(self, site: str, session_id: str, seconds: float) -> None:
        await self._store.write(_DEADLINE_SQL, site, session_id, float(seconds))

    async def close(self, site: str, session_id: str, reason: str) -> None:
        await self._store.write(_CLOSE_SQL, site, session_id, reason)

    async def open_sessions(self) -> list[OpenSession]:
        rows = await self._store.fetch(_LIST_OPEN_SQL)
        return [OpenSession(r["site"], r["session_id"], r["confirmation_id"], r["custom_data"], r["lang"],
                            bool(r["deadline_passed"])) for r in rows]
