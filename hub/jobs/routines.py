"""The five autonomous routines. Each is ``async def routine(ctx) -> dict`` (the dict becomes the run's result).

They are singletons (one run per job at a time across instances) and write only through ``ctx.fenced()``.
Races between them on goals, projects and tasks are prevented with row locks (``FOR UPDATE SKIP LOCKED``) taken
inside those fenced transactions. Slow calls (the frontier) happen outside transactions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import structlog

from hub.jobs.context import Routine, RoutineContext
from hub.jobs.goals import PROJECT_TEMPLATES, TaskSpec
from hub.jobs.history import overdue
from hub.jobs.tasks import TaskExecutor, default_actions

log = structlog.get_logger("kitt.jobs.routines")

RESEARCH_WINDOW = "7 days"
MAX_FRONTIER_TASKS = 5

# --- daily_health_check ------------------------------------------------------------------------------------


def normalise_probe(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``True``/``"ok"`` → ok; a string → not ok with that reason; ``{"ok":…, "reason":…}`` as given."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        if isinstance(value, Mapping):
            out[name] = {"ok": bool(value.get("ok")), "reason": value.get("reason")}
        elif value is True or (isinstance(value, str) and value.lower() == "ok"):
            out[name] = {"ok": True, "reason": None}
        else:
            out[name] = {"ok": False, "reason": str(value) if value not in (False, None) else "unavailable"}
    return out


async def daily_health_check(ctx: RoutineContext) -> dict[str, Any]:
    """Subsystem and device availability (from the probe) and overdue jobs: an event, an MQTT report."""
    checks = normalise_probe(await ctx.deps.probe())
    devices = {k.removeprefix("device:"): v for k, v in checks.items() if k.startswith("device:")}
    subsystems = {k: v for k, v in checks.items() if not k.startswith("device:")}
    late = [{"job": j["job"], "overdue_s": j["overdue_s"]} for j in await overdue(ctx.store)]
    report = {
        "ok": all(v["ok"] for v in checks.values()) and not late,
        "subsystems": subsystems,
        "devices": {
            "total": len(devices),
            "available": sum(1 for v in devices.values() if v["ok"]),
            "unavailable": {k: v["reason"] for k, v in devices.items() if not v["ok"]},
        },
        "jobs_overdue": late,
    }
    async with ctx.fenced() as conn:
        event_id = await ctx.store.record_event(
            "job.health_report", actor=ctx.deps.instance_id, subject=ctx.job, body=report, conn=conn,
        )
    await ctx.publish(ctx.topic("report"), {**report, "event_id": event_id, "run_id": ctx.run_id})
    return {"ok": report["ok"], "event_id": event_id, "unavailable": len(report["devices"]["unavailable"])
            + sum(1 for v in subsystems.values() if not v["ok"])}


# --- weekly_research_cycle ---------------------------------------------------------------------------------

_TOP_INTENTS_SQL = f"""
SELECT body->>'intent' AS intent, count(*) AS n FROM events
 WHERE kind = 'intent.recognized' AND at >= now() - interval '{RESEARCH_WINDOW}' AND body ? 'intent'
 GROUP BY 1 ORDER BY n DESC, intent LIMIT 10"""

_FAILURES_SQL = f"""
SELECT kind, count(*) AS n FROM events
 WHERE at >= now() - interval '{RESEARCH_WINDOW}'
   AND (kind LIKE '%failed' OR kind LIKE '%dead' OR kind LIKE '%error%' OR kind LIKE '%rejected%'
        OR kind LIKE '%timed_out' OR kind = 'job.write_refused' OR kind = 'job.run.lease_expired')
 GROUP BY kind ORDER BY n DESC, kind LIMIT 20"""

# Any event that carries a numeric latency_ms (requests, commands, hazard round-trips).
_LATENCY_SQL = f"""
SELECT count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY (body->>'latency_ms')::float8) AS p50_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY (body->>'latency_ms')::float8) AS p95_ms,
       max((body->>'latency_ms')::float8) AS max_ms
  FROM events WHERE at >= now() - interval '{RESEARCH_WINDOW}' AND jsonb_typeof(body->'latency_ms') = 'number'"""

_TOTAL_SQL = f"SELECT count(*) FROM events WHERE at >= now() - interval '{RESEARCH_WINDOW}'"


async def usage_statistics(ctx: RoutineContext) -> dict[str, Any]:
    store = ctx.store
    lat = await store.fetchrow(_LATENCY_SQL)
    return {
        "window": RESEARCH_WINDOW,
        "events": await store.fetchval(_TOTAL_SQL),
        "top_intents": [{"intent": r["intent"], "count": r["n"]} for r in await store.fetch(_TOP_INTENTS_SQL)],
        "failures": [{"kind": r["kind"], "count": r["n"]} for r in await store.fetch(_FAILURES_SQL)],
        "latency_ms": {
            "samples": lat["n"],
            **{k: None if lat[k] is None else round(lat[k], 1) for k in ("p50_ms", "p95_ms", "max_ms")},
        },
    }


async def weekly_research_cycle(ctx: RoutineContext) -> dict[str, Any]:
    """Usage statistics from the audit trail, summarised by the frontier when one is configured."""
    stats = await usage_statistics(ctx)
    summary: str | None = None
    summary_error: str | None = None
    if ctx.deps.frontier is not None:
        prompt = ("Summarise this week's usage of a home assistant hub in at most five short sentences, "
                  "naming what to improve. Statistics (JSON):\n" + json.dumps(stats, default=str))
        try:
            summary = await ctx.deps.frontier(prompt)
        except Exception as exc:  # the statistics stand on their own; the failure is in the report and the log
            summary_error = f"{type(exc).__name__}: {exc}"
            log.warning("frontier summary failed", error=summary_error)
    report = {**stats, "summary": (summary or "")[:4000] or None, "summary_error": summary_error}
    async with ctx.fenced() as conn:
        event_id = await ctx.store.record_event(
            "job.research_report", actor=ctx.deps.instance_id, subject=ctx.job, body=report, conn=conn,
        )
    await ctx.publish(ctx.topic("report"), {**report, "event_id": event_id})
    return {"event_id": event_id, "events": stats["events"], "summarised": summary is not None}


# --- project_generation_cycle ------------------------------------------------------------------------------

_GOALS_TO_PLAN_SQL = """
SELECT id, title, description, template FROM goals g
 WHERE status = 'active' AND NOT EXISTS (SELECT 1 FROM projects p WHERE p.goal_id = g.id AND p.status = 'active')
 ORDER BY id LIMIT $1"""  # $1 batch

# $1 goal id. Locks the goal for planning; nothing when another writer holds it or it no longer needs a plan.
_LOCK_GOAL_SQL = """
SELECT id FROM goals g WHERE id = $1 AND status = 'active'
   AND NOT EXISTS (SELECT 1 FROM projects p WHERE p.goal_id = g.id AND p.status = 'active')
   FOR UPDATE SKIP LOCKED"""

# $1 goal, $2 title, $3 template, $4 source, $5 token
_INSERT_PROJECT_SQL = """
INSERT INTO projects (goal_id, title, template, source, fence_token) VALUES ($1, $2, $3, $4, $5) RETURNING id"""

# $1 project, $2 goal, $3 titles[], $4 actions[], $5 params (jsonb list), $6 hazardous[], $7 timeouts[],
# $8 max attempts[]
_INSERT_TASKS_SQL = """
INSERT INTO tasks (project_id, goal_id, position, title, action, params, hazardous, timeout_s, max_attempts)
SELECT $1, $2, i, t.title, t.action, ($5::jsonb) -> (i - 1)::int, t.hazardous, t.timeout_s, t.max_attempts
  FROM unnest($3::text[], $4::text[], $6::bool[], $7::float8[], $8::int[])
       WITH ORDINALITY AS t(title, action, hazardous, timeout_s, max_attempts, i)"""


def parse_frontier_tasks(text: str | None) -> list[TaskSpec]:
    """One task per line; bullets and numbering stripped; at most five. Frontier tasks only ever notify."""
    specs = []
    for line in (text or "").splitlines():
        title = line.strip().lstrip("-*•0123456789.) ").strip()
        if 3 <= len(title) <= 200:
            specs.append(TaskSpec(title=title, action="notify"))
        if len(specs) == MAX_FRONTIER_TASKS:
            break
    return specs


async def _plan(ctx: RoutineContext, goal: Mapping[str, Any]) -> tuple[str, str, list[TaskSpec]]:
    template = PROJECT_TEMPLATES.get(goal["template"], PROJECT_TEMPLATES["default"])
    title = template.title.format(goal=goal["title"])
    if ctx.deps.frontier is not None:
        prompt = (f"List up to {MAX_FRONTIER_TASKS} short, concrete, safe tasks (one per line, no device "
                  f"commands) a home assistant could do towards this household goal: {goal['title']}. "
                  f"{goal['description']}")
        try:
            specs = parse_frontier_tasks(await ctx.deps.frontier(prompt))
        except Exception as exc:  # fall back to the template; the failure is logged with the goal
            log.warning("frontier planning failed; using the template", goal_id=goal["id"], error=repr(exc))
            specs = []
        if specs:
            return title, "frontier", specs
    specs = [TaskSpec(title=s.title.format(goal=goal["title"]), action=s.action, params=s.params,
                      hazardous=s.hazardous, timeout_s=s.timeout_s, max_attempts=s.max_attempts)
             for s in template.tasks]
    return title, "template", specs


async def project_generation_cycle(ctx: RoutineContext, *, batch: int = 20) -> dict[str, Any]:
    """Each active goal without an active project gets one, with its tasks (from its template or the frontier)."""
    created: list[int] = []
    for goal in await ctx.store.fetch(_GOALS_TO_PLAN_SQL, batch):
        title, source, specs = await _plan(ctx, goal)  # outside any transaction: the frontier may be slow
        async with ctx.fenced() as conn:
            if await conn.fetchval(_LOCK_GOAL_SQL, goal["id"]) is None:
                continue
            project_id = await conn.fetchval(
                _INSERT_PROJECT_SQL, goal["id"], title, goal["template"], source, ctx.token
            )
            await conn.execute(
                _INSERT_TASKS_SQL, project_id, goal["id"], [s.title for s in specs], [s.action for s in specs],
                [dict(s.params) for s in specs], [s.hazardous for s in specs], [s.timeout_s for s in specs],
                [s.max_attempts for s in specs],
            )
            await conn.execute(
                "UPDATE goals SET last_planned_at = now(), updated_at = now(), fence_token = $2 WHERE id = $1",
                goal["id"], ctx.token,  # $1 goal, $2 token
            )
            await ctx.store.record_event(
                "project.created", actor=ctx.deps.instance_id, subject=f"goal:{goal['id']}",
                body={"project_id": project_id, "title": title, "source": source, "tasks": len(specs)}, conn=conn,
            )
        created.append(project_id)
    return {"projects_created": len(created), "project_ids": created}


# --- task_execution_cycle ----------------------------------------------------------------------------------


async def task_execution_cycle(ctx: RoutineContext) -> dict[str, Any]:
    """Run the due tasks concurrently (bounded by the job's ``concurrency``), each with timeout and retries."""
    actions = {**default_actions(), **ctx.deps.task_actions}
    report = await TaskExecutor(ctx, actions, concurrency=ctx.concurrency).run()
    return report.as_dict()


# --- outcome_measurement_cycle -----------------------------------------------------------------------------

# Active projects whose tasks have all finished; locked so generation and measurement never both touch them.
_FINISHED_PROJECTS_SQL = """
SELECT p.id, p.goal_id, g.target,
       count(t.id) AS total,
       count(t.id) FILTER (WHERE t.status = 'done') AS done,
       count(t.id) FILTER (WHERE t.status IN ('failed', 'cancelled')) AS failed
  FROM projects p JOIN goals g ON g.id = p.goal_id JOIN tasks t ON t.project_id = p.id
 WHERE p.id = ANY(SELECT p2.id FROM projects p2 WHERE p2.status = 'active'
                     AND NOT EXISTS (SELECT 1 FROM tasks t2 WHERE t2.project_id = p2.id
                                        AND t2.status IN ('pending', 'running', 'awaiting_confirmation'))
                     AND EXISTS (SELECT 1 FROM tasks t3 WHERE t3.project_id = p2.id)
                   ORDER BY p2.id LIMIT $1 FOR UPDATE SKIP LOCKED)
 GROUP BY p.id, p.goal_id, g.target"""  # $1 batch

# $1 goal, $2 project, $3 total, $4 done, $5 failed, $6 success, $7 met, $8 token
_OUTCOME_SQL = """
INSERT INTO goal_outcomes (goal_id, project_id, tasks_total, tasks_done, tasks_failed, success, met_target,
                           fence_token)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (project_id) DO NOTHING"""


async def outcome_measurement_cycle(ctx: RoutineContext, *, batch: int = 50) -> dict[str, Any]:
    """Score finished projects against their goal's target; a goal whose project met it is achieved."""
    measured = []
    async with ctx.fenced() as conn:
        for p in await conn.fetch(_FINISHED_PROJECTS_SQL, batch):
            success = p["done"] / p["total"]
            met = success >= p["target"]
            outcome = {"tasks": p["total"], "done": p["done"], "failed": p["failed"], "success": round(success, 4),
                       "met_target": met}
            await conn.execute(_OUTCOME_SQL, p["goal_id"], p["id"], p["total"], p["done"], p["failed"], success,
                               met, ctx.token)
            await conn.execute(
                """UPDATE projects SET status = $2, outcome = $3::jsonb, finished_at = now(), fence_token = $4
                    WHERE id = $1""",  # $1 project, $2 status, $3 outcome, $4 token
                p["id"], "succeeded" if met else "failed", outcome, ctx.token,
            )
            await conn.execute(
                """UPDATE goals SET progress = $2, status = CASE WHEN $3 THEN 'achieved' ELSE status END,
                          updated_at = now(), fence_token = $4 WHERE id = $1""",  # $1 goal, $2, $3 met, $4 token
                p["goal_id"], success, met, ctx.token,
            )
            await ctx.store.record_event(
                "goal.outcome", actor=ctx.deps.instance_id, subject=f"goal:{p['goal_id']}",
                body={"project_id": p["id"], **outcome}, conn=conn,
            )
            measured.append({"project_id": p["id"], **outcome})
    return {"measured": len(measured), "outcomes": measured}


def default_routines() -> dict[str, Routine]:
    return {
        "daily_health_check": daily_health_check,
        "weekly_research_cycle": weekly_research_cycle,
        "project_generation_cycle": project_generation_cycle,
        "task_execution_cycle": task_execution_cycle,
        "outcome_measurement_cycle": outcome_measurement_cycle,
    }
