"""Read side: schedules with their last runs, run history, and which jobs are overdue."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hub.jobs.schedule import parse_schedule
from hub.store import Store

_LIST_SQL = """
SELECT s.name, s.expr, s.timezone, s.enabled, s.misfire, s.catch_up_cap, s.timeout_s, s.max_attempts,
       s.concurrency, s.next_run_at, s.last_nominal_at, s.missed_count, s.created_at,
       ls.finished_at AS last_success_at, lr.id AS last_run_id, lr.status AS last_status,
       lr.finished_at AS last_finished_at, now() AS db_now
  FROM schedules s
  LEFT JOIN LATERAL (SELECT finished_at FROM job_runs WHERE job = s.name AND status = 'succeeded'
                      ORDER BY finished_at DESC LIMIT 1) ls ON true
  LEFT JOIN LATERAL (SELECT id, status, finished_at FROM job_runs WHERE job = s.name
                      ORDER BY created_at DESC, id DESC LIMIT 1) lr ON true
 ORDER BY s.name"""

# $1 job name or NULL, $2 limit
_HISTORY_SQL = """
SELECT id, job, nominal_at, trigger, status, attempts, max_attempts, run_after, created_at, started_at,
       finished_at, duration_ms, lease_owner, lease_token, last_error, errors, result
  FROM job_runs WHERE ($1::text IS NULL OR job = $1)
 ORDER BY created_at DESC, id DESC LIMIT $2"""


async def list_jobs(store: Store) -> list[dict[str, Any]]:
    rows = await store.fetch(_LIST_SQL)
    out = []
    for r in rows:
        d = dict(r)
        d.pop("db_now")
        out.append(d)
    return out


async def history(store: Store, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    return [dict(r) for r in await store.fetch(_HISTORY_SQL, name, max(1, min(limit, 1000)))]


async def overdue(store: Store) -> list[dict[str, Any]]:
    """Enabled jobs that have not succeeded within twice their period (a new job counts from its creation)."""
    late = []
    for r in await store.fetch(_LIST_SQL):
        if not r["enabled"]:
            continue
        now = r["db_now"]
        period = parse_schedule(r["expr"], r["timezone"]).period(now)
        since = r["last_success_at"] or r["created_at"]
        if now - since > 2 * period:
            late.append({
                "job": r["name"], "last_success_at": r["last_success_at"], "period_s": period / timedelta(seconds=1),
                "overdue_s": round((now - since - 2 * period) / timedelta(seconds=1), 3),
                "last_status": r["last_status"],
            })
    return late
