"""Goals and project templates: what the planning routines turn into projects and tasks.

``add_goal`` / ``list_goals`` are what the CLI (``kitt-hub jobs …``) and the API call. A goal names a project
template; ``project_generation_cycle`` creates one active project per goal from it (or from the frontier's
suggestions when one is configured), and ``outcome_measurement_cycle`` scores the finished project against the
goal's ``target`` (the share of tasks that must succeed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hub.errors import KittError
from hub.store import Store


@dataclass(frozen=True)
class TaskSpec:
    title: str
    action: str = "notify"
    params: tuple[tuple[str, Any], ...] = ()
    hazardous: bool = False
    timeout_s: float = 30.0
    max_attempts: int = 3


@dataclass(frozen=True)
class ProjectTemplate:
    title: str  # may use {goal}
    tasks: tuple[TaskSpec, ...]


# Immutable data, not state: the templates a goal may name.
PROJECT_TEMPLATES: dict[str, ProjectTemplate] = {
    "default": ProjectTemplate(
        title="Work towards: {goal}",
        tasks=(
            TaskSpec("Plan the first step for: {goal}"),
            TaskSpec("Note the progress on: {goal}", action="record"),
        ),
    ),
    "energy": ProjectTemplate(
        title="Save energy: {goal}",
        tasks=(
            TaskSpec("Check which lights stay on after midnight"),
            TaskSpec("Review the heating schedule against who is home"),
            TaskSpec("Log this week's energy review", action="record"),
        ),
    ),
    "security": ProjectTemplate(
        title="Keep the house secure: {goal}",
        tasks=(
            TaskSpec("Remind the house to check doors and windows at 23:00"),
            TaskSpec("Log the security review", action="record"),
        ),
    ),
    "maintenance": ProjectTemplate(
        title="Maintain the appliances: {goal}",
        tasks=(
            TaskSpec("Remind about cleaning the oven"),
            # Switching an appliance on is hazardous: this task only ever opens a confirmation.
            TaskSpec(
                "Start the oven's self-cleaning cycle", action="device_command",
                params=(("device", "oven"), ("capability", "appliance.on")), hazardous=True,
            ),
        ),
    ),
}


class GoalError(KittError):
    """A goal that cannot be added (empty title, unknown template, target out of range)."""


async def add_goal(
    store: Store,
    title: str,
    *,
    description: str = "",
    template: str = "default",
    target: float = 1.0,
    created_by: str = "user",
) -> dict[str, Any]:
    """Add an active goal and record it in the audit trail; returns the row."""
    title = title.strip()
    if not 1 <= len(title) <= 500:
        raise GoalError("title must be 1 to 500 characters")
    if template not in PROJECT_TEMPLATES:
        raise GoalError(f"unknown template {template!r}; known: {', '.join(sorted(PROJECT_TEMPLATES))}")
    if not 0 < target <= 1:
        raise GoalError("target must be within (0, 1]: the share of tasks that must succeed")
    async with store.transaction() as conn:
        row = await conn.fetchrow(
            """INSERT INTO goals (title, description, template, target, created_by) VALUES ($1, $2, $3, $4, $5)
               RETURNING id, title, description, template, target, status, progress, created_at""",
            title, description, template, float(target), created_by,  # $1 title, $2 descr, $3 template, $4, $5
        )
        await store.record_event(
            "goal.added", actor=created_by, subject=f"goal:{row['id']}",
            body={"title": title, "template": template, "target": target}, conn=conn,
        )
    return dict(row)


async def list_goals(store: Store, *, status: str | None = None) -> list[dict[str, Any]]:
    """Goals with their project and task counts, newest first."""
    rows = await store.fetch(
        """SELECT g.id, g.title, g.description, g.template, g.target, g.status, g.progress, g.created_at,
                  g.last_planned_at,
                  (SELECT count(*) FROM projects p WHERE p.goal_id = g.id) AS projects,
                  (SELECT count(*) FROM tasks t WHERE t.goal_id = g.id AND t.status = 'done') AS tasks_done,
                  (SELECT count(*) FROM tasks t WHERE t.goal_id = g.id) AS tasks_total
             FROM goals g WHERE ($1::text IS NULL OR g.status = $1) ORDER BY g.id DESC""",
        status,  # $1 status filter
    )
    return [dict(r) for r in rows]
