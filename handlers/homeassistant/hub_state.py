"""The values behind the hub's own sensors, read from whichever services are there.

Every reader tolerates a missing service (a plugin that failed, or one not built yet) by answering
"unknown" (HA's ``None`` payload) rather than raising: a broken cache must not blank the whole device.
A service that is present but fails is logged, and its sensor goes unknown too.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import structlog

from handlers.homeassistant.platforms import NONE
from hub.errors import KittError

log = structlog.get_logger("kitt.homeassistant.state")

# Latest run of each job: the last finished result, or "running" while one runs. $1 job names (text[]).
_LAST_RUNS_SQL = """
SELECT DISTINCT ON (job) job, status, attempts, started_at, finished_at, last_error
  FROM job_runs
 WHERE job = ANY($1::text[]) AND status <> 'scheduled'
 ORDER BY job, id DESC"""


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _jsonable(data: dict[str, Any]) -> str:
    return json.dumps({k: _iso(v) for k, v in data.items()}, default=str)


async def pending_confirmations(confirmations: Any) -> tuple[str, str]:
    """(state, attributes JSON): the count, and the pending ones (id, what, where, level, until)."""
    if confirmations is None:
        return NONE, "{}"
    try:
        pending = await confirmations.pending()
    except Exception:  # a failing provider makes its sensor unknown, never the whole refresh
        log.exception("cannot read pending confirmations")
        return NONE, "{}"
    items = [{"id": c.id, "action": c.action.describe(), "hazard_class": c.hazard_class, "level": c.level,
              "site": c.site, "expires_at": _iso(c.expires_at)} for c in pending]
    return str(len(pending)), json.dumps({"confirmations": items})


async def cache_hit_ratio(cache: Any) -> tuple[str, str]:
    if cache is None or not hasattr(cache, "stats"):
        return NONE, "{}"
    try:
        stats = await _maybe_await(cache.stats())
    except Exception:
        log.exception("cannot read cache stats")
        return NONE, "{}"
    ratio = stats.get("hit_ratio") if isinstance(stats, dict) else None
    attrs = {k: stats[k] for k in ("entries", "hits", "misses", "evictions") if isinstance(stats, dict) and k in stats}
    if not isinstance(ratio, int | float):
        return NONE, json.dumps(attrs)
    return f"{float(ratio) * 100:.1f}", json.dumps(attrs)


async def job_results(jobs: Any, store: Any, names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """job → (last status or "never", attributes JSON). From the jobs service when it is there, else from the
    ``job_runs`` table (the durable truth either way); unknown for every job when neither answers."""
    wanted = list(names)
    if not wanted:
        return {}
    if jobs is not None and hasattr(jobs, "list_jobs"):
        try:
            listed = await _maybe_await(jobs.list_jobs())
            by_name = {j.get("name"): j for j in listed if isinstance(j, dict)}
            return {n: (str(by_name[n].get("last_status") or "never"),
                        _jsonable({k: v for k, v in by_name[n].items() if k != "name"}))
                    if n in by_name else (NONE, "{}") for n in wanted}
        except Exception:
            log.exception("cannot list jobs; reading job_runs instead")
    try:
        rows = await store.fetch(_LAST_RUNS_SQL, wanted)
    except KittError as exc:
        log.error("cannot read job runs", error=str(exc))
        return {n: (NONE, "{}") for n in wanted}
    found = {r["job"]: r for r in rows}
    out: dict[str, tuple[str, str]] = {}
    for name in wanted:
        row = found.get(name)
        if row is None:
            out[name] = ("never", "{}")
        else:
            out[name] = (row["status"], _jsonable({"attempts": row["attempts"], "started_at": row["started_at"],
                                                   "finished_at": row["finished_at"], "error": row["last_error"]}))
    return out


def spine_status(spine: Any) -> tuple[str, str]:
    status = dict(spine.status)
    state = "ready" if status.get("connected") and status.get("subscribed") else (
        "connected" if status.get("connected") else "disconnected")
    return state, json.dumps(status)


async def connectivity(readiness: Any) -> tuple[str, str]:
    ready, checks = await readiness.evaluate()
    return ("ON" if ready else "OFF"), json.dumps({c.name: c.reason for c in checks})
