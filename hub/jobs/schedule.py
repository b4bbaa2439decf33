"""Schedule expressions and tick arithmetic: pure functions, no I/O, no clock of their own.

Two forms:

* ``every N<unit>`` with unit ``ms``, ``s``, ``m``, ``h`` or ``d`` (``every 15m``). Ticks are aligned to the Unix
  epoch in UTC (``every 15m`` fires at :00, :15, :30, :45), so every instance computes the same nominal times
  and daylight-saving changes never shift them. ``ms`` exists for tests; production schedules use seconds up.
* a five-field cron expression (``30 2 * * *``), or six fields with seconds first, evaluated in the schedule's
  IANA time zone by cronsim. DST follows Debian cron (see ``docs/jobs.md``): a fixed local time that does not
  exist (spring forward) fires once at the first valid minute after the gap; a fixed local time that occurs
  twice (fall back) fires once, at its first occurrence. Wildcard-hour expressions keep elapsed-time meaning
  and fire in both passes of a repeated hour.

The caller always passes "now" (the database clock), so nothing here reads ``time.time()``.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from hub.errors import KittError

MisfirePolicy = Literal["skip", "once", "all"]

_EVERY = re.compile(r"^every\s+(\d+)\s*(ms|s|m|h|d)$", re.IGNORECASE)
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Counting missed ticks stops here: a per-second schedule down for a week must not spin the ticker.
MAX_ENUMERATED_TICKS = 10_000


class ScheduleError(KittError):
    """A schedule expression or time zone that cannot be used."""


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule. Exactly one of ``interval_ms`` and ``cron`` is set."""

    expr: str
    timezone: str = "UTC"
    interval_ms: int | None = None
    cron: str | None = None

    @property
    def kind(self) -> Literal["every", "cron"]:
        return "every" if self.interval_ms is not None else "cron"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def next_after(self, after: datetime) -> datetime:
        """The first nominal tick strictly after ``after`` (an aware instant), in UTC."""
        after = _aware(after)
        if self.interval_ms is not None:
            elapsed_ms = (after - _EPOCH) // timedelta(milliseconds=1)
            return _EPOCH + timedelta(milliseconds=(elapsed_ms // self.interval_ms + 1) * self.interval_ms)
        assert self.cron is not None
        it = CronSim(self.cron, after.astimezone(self.tz))
        while True:
            # cronsim walks local wall time, so in a repeated hour it can answer an earlier instant: skip those.
            tick = next(it).astimezone(UTC)
            if tick > after:
                return tick

    def ticks(
        self, start: datetime, end: datetime, *, keep: int, limit: int = MAX_ENUMERATED_TICKS
    ) -> tuple[list[datetime], int]:
        """Nominal ticks ``t`` with ``start <= t <= end`` (``start`` is itself a tick).

        Returns (the latest ``keep`` of them, oldest first; how many there are). Counting cron ticks stops at
        ``limit``; interval ticks are counted exactly.
        """
        start, end = _aware(start), _aware(end)
        if start > end:
            return [], 0
        if self.interval_ms is not None:
            step = timedelta(milliseconds=self.interval_ms)
            total = (end - start) // step + 1
            last = start + step * (total - 1)
            n = min(keep, total)
            return [last - step * (n - 1 - i) for i in range(n)], total
        kept: deque[datetime] = deque(maxlen=keep)
        tick, count = start, 0
        while tick <= end and count < limit:
            kept.append(tick)
            count += 1
            tick = self.next_after(tick)
        if tick <= end:
            # Truncated: the kept ticks are old ones; take the latest ones by walking back from ``end``.
            kept.clear()
            back = CronSim(self.cron or "", end.astimezone(self.tz), reverse=True)
            while len(kept) < keep:
                t = next(back).astimezone(UTC)
                if t < start:
                    break
                if t <= end and (not kept or t < kept[0]):
                    kept.appendleft(t)
        return list(kept), count

    def period(self, around: datetime) -> timedelta:
        """The gap between the two ticks following ``around``: the job's period for health checks."""
        if self.interval_ms is not None:
            return timedelta(milliseconds=self.interval_ms)
        first = self.next_after(around)
        return self.next_after(first) - first


def _aware(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise ScheduleError("naive datetime: pass an aware instant (the database clock)")
    return dt.astimezone(UTC)


def parse_schedule(expr: str, timezone: str = "UTC") -> Schedule:
    """Parse ``every N<unit>`` or a cron expression; raises ``ScheduleError`` with the reason."""
    text = " ".join(expr.split())
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"unknown time zone {timezone!r}") from exc
    if m := _EVERY.match(text):
        n, unit = int(m.group(1)), m.group(2).lower()
        if n <= 0:
            raise ScheduleError(f"{expr!r}: the interval must be positive")
        return Schedule(expr=text, timezone=timezone, interval_ms=n * _UNIT_MS[unit])
    if text.lower().startswith("every"):
        raise ScheduleError(f"{expr!r}: expected 'every N' with unit ms, s, m, h or d (e.g. 'every 15m')")
    if len(text.split()) not in (5, 6):
        raise ScheduleError(f"{expr!r}: a cron expression has 5 fields (or 6 with seconds first)")
    try:
        CronSim(text, datetime(2026, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ScheduleError(f"{expr!r}: {exc}") from exc
    return Schedule(expr=text, timezone=timezone, cron=text)


@dataclass(frozen=True)
class TickPlan:
    """What one pass of the ticker does for one schedule."""

    run: list[datetime]  # nominal times to insert runs for, oldest first
    missed: int  # due ticks that get no run
    next_run_at: datetime  # the first tick strictly after now


def plan_ticks(
    schedule: Schedule,
    *,
    next_run_at: datetime,
    now: datetime,
    policy: MisfirePolicy,
    catch_up_cap: int,
    grace: timedelta,
) -> TickPlan:
    """Decide which due ticks (``next_run_at <= t <= now``) get a run.

    * ``skip``: the latest due tick runs only if it is at most ``grace`` late; every other tick is missed.
    * ``once``: the latest due tick runs (however late); the older ones are missed (coalesced).
    * ``all``:  the latest ``max(catch_up_cap, 1)`` due ticks run, oldest first; older ones are missed.
    """
    keep = max(catch_up_cap, 1) if policy == "all" else 1
    recent, count = schedule.ticks(next_run_at, now, keep=keep)
    nxt = schedule.next_after(now)
    if count == 0:
        return TickPlan(run=[], missed=0, next_run_at=next_run_at)
    on_time = now - recent[-1] <= grace
    run = recent[-keep:] if policy != "skip" or on_time else []
    return TickPlan(run=run, missed=count - len(run), next_run_at=nxt)
