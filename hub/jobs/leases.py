"""Singleton leases with fencing tokens.

A lease row (``leases``) names a singleton (``job:<name>``). Taking it over after it expired raises its token by
one; the token never goes back because the row is never deleted. Every write a holder makes starts with
``fence()``: ``SELECT … FOR SHARE`` of the lease row with the holder's token, inside the writing transaction.
When the token moved on (another instance took over while this one was paused), the write is refused with
``StaleLeaseError`` and rolled back. The ``FOR SHARE`` row lock also makes a takeover wait until the fenced
transaction ends, so a takeover and a holder's write never interleave.

Session advisory locks are deliberately not used: asyncpg's pool unlocks them when a connection is released,
and they carry no token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncpg

from hub.errors import StaleLeaseError
from hub.store import Store

# $1 name, $2 holder, $3 ttl seconds. Returns the token when acquired (new row, or the old one had expired).
ACQUIRE_SQL = """
INSERT INTO leases AS l (name, holder, token, acquired_at, expires_at)
VALUES ($1, $2, 1, now(), now() + make_interval(secs => $3))
ON CONFLICT (name) DO UPDATE
   SET token = l.token + 1, holder = EXCLUDED.holder, acquired_at = now(), expires_at = EXCLUDED.expires_at
 WHERE l.expires_at <= now()
RETURNING token"""

# $1 names[], $2 holder, $3 tokens[], $4 ttl seconds. Renews the leases still held; returns their names.
RENEW_SQL = """
UPDATE leases AS l SET expires_at = now() + make_interval(secs => $4)
  FROM unnest($1::text[], $3::bigint[]) AS h(name, token)
 WHERE l.name = h.name AND l.token = h.token AND l.holder = $2 AND l.expires_at > now()
RETURNING l.name"""

# $1 name, $2 holder, $3 token. Releases early so the next run need not wait for expiry; never deletes.
RELEASE_SQL = """
UPDATE leases SET expires_at = now() WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > now()"""

# $1 name, $2 holder, $3 token, $4 idle-in-transaction limit in ms (text). The fence: one row while this holder's
# term is current. The limit bounds how long a holder paused inside a fenced transaction can block a takeover
# (its session is ended and the transaction rolled back).
FENCE_SQL = """
SELECT token, set_config('idle_in_transaction_session_timeout', $4, true)
  FROM leases WHERE name = $1 AND token = $3 AND holder = $2 AND expires_at > now() FOR SHARE"""

# $1 name. The current token (for error messages and tests).
CURRENT_SQL = "SELECT token, holder, expires_at > now() AS live FROM leases WHERE name = $1"


def job_lease_name(job: str) -> str:
    return f"job:{job}"


@dataclass
class LeaseHandle:
    """One holder's term of a lease. ``lost`` turns true when a heartbeat found the term over."""

    name: str
    holder: str
    token: int
    ttl_s: float = 30.0
    lost: bool = field(default=False, compare=False)


async def acquire(conn: asyncpg.Connection, name: str, holder: str, ttl_s: float) -> LeaseHandle | None:
    """Take the lease if it is free or expired (in the caller's transaction); None if someone holds it."""
    token = await conn.fetchval(ACQUIRE_SQL, name, holder, float(ttl_s))
    return None if token is None else LeaseHandle(name=name, holder=holder, token=token, ttl_s=ttl_s)


async def fence(conn: asyncpg.Connection, lease: LeaseHandle) -> None:
    """Refuse the surrounding transaction unless ``lease`` is still the current, live term."""
    idle_ms = str(max(1000, int(lease.ttl_s * 1000)))
    if await conn.fetchval(FENCE_SQL, lease.name, lease.holder, lease.token, idle_ms) is None:
        lease.lost = True
        row = await conn.fetchrow(CURRENT_SQL, lease.name)
        now_token = None if row is None else row["token"]
        raise StaleLeaseError(
            f"lease {lease.name!r}: token {lease.token} held by {lease.holder!r} is no longer current"
            f" (current token {now_token})"
        )


@asynccontextmanager
async def fenced_transaction(store: Store, lease: LeaseHandle) -> AsyncIterator[asyncpg.Connection]:
    """A transaction whose first statement is the fence; ``StaleLeaseError`` rolls it back."""
    async with store.transaction() as conn:
        await fence(conn, lease)
        yield conn


async def renew(conn: asyncpg.Connection, leases: list[LeaseHandle], holder: str, ttl_s: float) -> set[str]:
    """Extend the given terms; returns the names still held (the others are marked lost)."""
    if not leases:
        return set()
    rows = await conn.fetch(
        RENEW_SQL, [lease.name for lease in leases], holder, [lease.token for lease in leases], float(ttl_s)
    )
    held = {r["name"] for r in rows}
    for lease in leases:
        if lease.name not in held:
            lease.lost = True
    return held


async def release(conn: asyncpg.Connection, lease: LeaseHandle) -> None:
    await conn.execute(RELEASE_SQL, lease.name, lease.holder, lease.token)
