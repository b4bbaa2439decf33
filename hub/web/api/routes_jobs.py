"""Routines (jobs): schedules with their last run, run now, run history; and the goals they work on."""

from __future__ import annotations

from hub.web.api.errors import ApiError, require
from hub.web.api.models import (
    GoalBody,
    GoalOut,
    GoalsOut,
    GoalsQuery,
    HistoryOut,
    HistoryQuery,
    JobOut,
    JobPath,
    JobsOut,
    RunOut,
    RunQueuedOut,
)
from hub.web.api.routing import Call, Reply, RouteTable

routes = RouteTable(tag="jobs")


@routes.get("/jobs", summary="Schedules with their last run and next due time",
            responses={200: ("the jobs", JobsOut)}, errors=(503,))
async def list_jobs(call: Call) -> Reply:
    jobs = require(call.deps.services, "jobs")
    return Reply(JobsOut(jobs=[JobOut.model_validate(j) for j in await jobs.list_jobs()]))


@routes.get("/jobs/history", summary="Run history, newest first", query=HistoryQuery,
            responses={200: ("the runs", HistoryOut)}, errors=(503,))
async def job_history(call: Call) -> Reply:
    jobs = require(call.deps.services, "jobs")
    q: HistoryQuery = call.query
    runs = await jobs.history(q.name, limit=q.limit)
    return Reply(HistoryOut(runs=[RunOut.model_validate(r) for r in runs]))


@routes.post("/jobs/{name}/run", summary="Queue a run of a job now", path_model=JobPath,
             responses={202: ("queued; watch /api/v1/jobs/history", RunQueuedOut)}, errors=(404, 503))
async def run_job(call: Call) -> Reply:
    jobs = require(call.deps.services, "jobs")
    name = call.path.name
    if name not in {j["name"] for j in await jobs.list_jobs()}:
        raise ApiError(404, "not_found", f"no job called {name!r}")
    run_id = await jobs.run_now(name)
    return Reply(RunQueuedOut(job=name, run_id=run_id), status=202)


def _goals_module():  # type: ignore[no-untyped-def]
    # Goals live beside the jobs (hub.jobs.goals); imported lazily so a hub without jobs still serves the rest.
    from hub.jobs import goals

    return goals


@routes.get("/goals", summary="Goals with their project and task counts", query=GoalsQuery,
            responses={200: ("the goals", GoalsOut)}, errors=(503,))
async def list_goals(call: Call) -> Reply:
    store = call.deps.store
    if store is None:
        raise ApiError(503, "service_unavailable", "the store is not running yet")
    rows = await _goals_module().list_goals(store, status=call.query.status)
    return Reply(GoalsOut(goals=[GoalOut.model_validate(r) for r in rows]))


@routes.post("/goals", summary="Add a goal for the planning routines", body=GoalBody,
             responses={201: ("the new goal", GoalOut)}, errors=(503,))
async def add_goal(call: Call) -> Reply:
    store = call.deps.store
    if store is None:
        raise ApiError(503, "service_unavailable", "the store is not running yet")
    goals = _goals_module()
    body: GoalBody = call.body
    try:
        row = await goals.add_goal(store, body.title, description=body.description, template=body.template,
                                   target=body.target, created_by="web")
    except goals.GoalError as exc:
        raise ApiError(422, "invalid_body", str(exc)) from exc
    return Reply(GoalOut.model_validate(row), status=201)
