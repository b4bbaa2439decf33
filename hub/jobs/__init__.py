"""Durable autonomous jobs: schedules in PostgreSQL, runs with leases and fencing, the five routines."""

from hub.jobs.context import JobDeps, RoutineContext, TaskInfo
from hub.jobs.goals import PROJECT_TEMPLATES, GoalError, add_goal, list_goals
from hub.jobs.leases import LeaseHandle, fenced_transaction
from hub.jobs.schedule import Schedule, ScheduleError, parse_schedule
from hub.jobs.scheduler import sync_schedules
from hub.jobs.service import JobError, JobService

__all__ = [
    "PROJECT_TEMPLATES",
    "GoalError",
    "JobDeps",
    "JobError",
    "JobService",
    "LeaseHandle",
    "RoutineContext",
    "Schedule",
    "ScheduleError",
    "TaskInfo",
    "add_goal",
    "fenced_transaction",
    "list_goals",
    "parse_schedule",
    "sync_schedules",
]
