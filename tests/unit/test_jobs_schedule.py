"""Schedule parsing, tick arithmetic, DST behaviour and misfire policies (pure, no I/O)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from hub.jobs.schedule import ScheduleError, TickPlan, parse_schedule, plan_ticks

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --- parsing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "ms"),
    [("every 15m", 900_000), ("every 1s", 1_000), ("EVERY 2h", 7_200_000), ("every  1d", 86_400_000),
     ("every 250ms", 250), ("every 90 s", 90_000)],
)
def test_every_parses_to_milliseconds(expr: str, ms: int) -> None:
    sched = parse_schedule(expr)
    assert sched.kind == "every"
    assert sched.interval_ms == ms


@pytest.mark.parametrize("expr", ["every", "every 0m", "every 5 minutes", "every -1s", "every 1w", "* * *",
                                  "61 * * * *", "0 25 * * *", "bogus", ""])
def test_bad_expressions_are_rejected_with_a_reason(expr: str) -> None:
    with pytest.raises(ScheduleError):
        parse_schedule(expr)


def test_unknown_time_zone_is_rejected() -> None:
    with pytest.raises(ScheduleError, match="time zone"):
        parse_schedule("0 6 * * *", "Mars/Olympus")


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ScheduleError, match="naive"):
        parse_schedule("every 1m").next_after(datetime(2026, 1, 1))


# --- every ----------------------------------------------------------------------------------------------


def test_every_is_aligned_to_the_epoch_and_strictly_after() -> None:
    sched = parse_schedule("every 15m")
    assert sched.next_after(utc(2026, 5, 1, 10, 7, 30)) == utc(2026, 5, 1, 10, 15)
    # A tick instant itself is not "after" itself.
    assert sched.next_after(utc(2026, 5, 1, 10, 15)) == utc(2026, 5, 1, 10, 30)


def test_every_ignores_dst_it_is_elapsed_time() -> None:
    sched = parse_schedule("every 1h", "Europe/Berlin")
    t = utc(2026, 3, 28, 22)
    gaps = set()
    for _ in range(10):
        nxt = sched.next_after(t)
        gaps.add(nxt - t)
        t = nxt
    assert gaps == {timedelta(hours=1)}


def test_every_ticks_counts_exactly_and_keeps_the_latest() -> None:
    sched = parse_schedule("every 1m")
    ticks, count = sched.ticks(utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 2, 0, 30), keep=3)
    assert count == 121
    assert ticks == [utc(2026, 1, 1, 1, 58), utc(2026, 1, 1, 1, 59), utc(2026, 1, 1, 2, 0)]


# --- cron -----------------------------------------------------------------------------------------------


def test_cron_next_times_in_a_zone() -> None:
    sched = parse_schedule("0 6 * * *", "Europe/Berlin")
    # 06:00 Berlin in winter is 05:00 UTC; in summer 04:00 UTC.
    assert sched.next_after(utc(2026, 1, 10, 12)) == utc(2026, 1, 11, 5)
    assert sched.next_after(utc(2026, 7, 10, 12)) == utc(2026, 7, 11, 4)


def test_cron_weekly_and_six_field_seconds() -> None:
    weekly = parse_schedule("0 3 * * 1")  # Mondays 03:00 UTC
    assert weekly.next_after(utc(2026, 5, 6)) == utc(2026, 5, 11, 3)  # 2026-05-06 is a Wednesday
    every_10s = parse_schedule("*/10 * * * * *")
    assert every_10s.next_after(utc(2026, 5, 6, 0, 0, 5)) == utc(2026, 5, 6, 0, 0, 10)


def test_cron_period_is_the_gap_between_ticks() -> None:
    assert parse_schedule("0 3 * * 1").period(utc(2026, 5, 6)) == timedelta(days=7)
    assert parse_schedule("every 15m").period(utc(2026, 5, 6)) == timedelta(minutes=15)


# --- DST: a daily 02:30 job in Europe/Berlin across both 2026 transitions ------------------------------


def test_dst_spring_forward_the_missing_0230_runs_once_at_0300() -> None:
    sched = parse_schedule("30 2 * * *", "Europe/Berlin")
    ticks, _ = sched.ticks(utc(2026, 3, 27, 1, 30), utc(2026, 3, 31, 0), keep=10)
    local = [t.astimezone(BERLIN).strftime("%m-%d %H:%M %Z") for t in ticks]
    assert local == ["03-27 02:30 CET", "03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST"]


def test_dst_fall_back_the_repeated_0230_runs_once_at_its_first_occurrence() -> None:
    sched = parse_schedule("30 2 * * *", "Europe/Berlin")
    ticks, _ = sched.ticks(utc(2026, 10, 24, 0, 30), utc(2026, 10, 27, 0), keep=10)
    assert ticks == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    # Asked from inside the second 02:00-03:00 hour, the next run is tomorrow, not the repeated 02:30.
    assert sched.next_after(utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 30)


@pytest.mark.parametrize("day", [datetime(2026, 3, 27), datetime(2026, 10, 23)])
def test_dst_ticker_simulation_runs_exactly_once_per_local_day(day: datetime) -> None:
    """Drive the ticker every minute for four days over the transition, as the database clock would."""
    sched = parse_schedule("30 2 * * *", "Europe/Berlin")
    start = day.replace(tzinfo=UTC)
    next_run = sched.next_after(start)
    runs: list[datetime] = []
    for minute in range(4 * 24 * 60):
        now = start + timedelta(minutes=minute)
        if next_run > now:
            continue
        plan = plan_ticks(sched, next_run_at=next_run, now=now, policy="once", catch_up_cap=10,
                          grace=timedelta(minutes=1))
        assert plan.missed == 0
        runs.extend(plan.run)
        next_run = plan.next_run_at
    per_day = Counter(t.astimezone(BERLIN).date() for t in runs)
    assert len(per_day) == 4
    assert set(per_day.values()) == {1}


def test_wildcard_hour_cron_runs_in_both_passes_of_the_repeated_hour() -> None:
    sched = parse_schedule("*/30 * * * *", "Europe/Berlin")
    ticks, count = sched.ticks(utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 2, 0), keep=10)
    assert count == 5  # 02:00, 02:30 (CEST) and 02:00, 02:30 (CET), 03:00 CET: elapsed time kept
    assert ticks[-1] == utc(2026, 10, 25, 2, 0)


# --- misfire policies -----------------------------------------------------------------------------------


def _outage_plan(policy: str, cap: int = 10) -> TickPlan:
    # A per-minute job whose ticker was away from 10:00 to 12:00:30.
    sched = parse_schedule("every 1m")
    return plan_ticks(sched, next_run_at=utc(2026, 1, 1, 10), now=utc(2026, 1, 1, 12, 0, 30), policy=policy,
                      catch_up_cap=cap, grace=timedelta(seconds=60))


def test_misfire_once_runs_the_latest_tick_and_counts_the_rest() -> None:
    plan = _outage_plan("once")
    assert plan.run == [utc(2026, 1, 1, 12)]
    assert plan.missed == 120
    assert plan.next_run_at == utc(2026, 1, 1, 12, 1)


def test_misfire_all_runs_at_most_the_cap_oldest_first() -> None:
    plan = _outage_plan("all", cap=5)
    assert plan.run == [utc(2026, 1, 1, 11, 56) + timedelta(minutes=i) for i in range(5)]
    assert plan.missed == 116


def test_misfire_all_with_cap_zero_still_runs_the_latest() -> None:
    assert _outage_plan("all", cap=0).run == [utc(2026, 1, 1, 12)]


def test_misfire_skip_runs_the_latest_only_when_on_time() -> None:
    on_time = _outage_plan("skip")
    assert on_time.run == [utc(2026, 1, 1, 12)]  # 30 s late: within grace
    sched = parse_schedule("0 6 * * *")
    late = plan_ticks(sched, next_run_at=utc(2026, 1, 1, 6), now=utc(2026, 1, 1, 9), policy="skip",
                      catch_up_cap=10, grace=timedelta(seconds=60))
    assert late.run == []
    assert late.missed == 1
    assert late.next_run_at == utc(2026, 1, 2, 6)


def test_nothing_due_changes_nothing() -> None:
    sched = parse_schedule("every 1m")
    plan = plan_ticks(sched, next_run_at=utc(2026, 1, 1, 10), now=utc(2026, 1, 1, 9, 59), policy="once",
                      catch_up_cap=10, grace=timedelta(seconds=60))
    assert plan.run == [] and plan.missed == 0 and plan.next_run_at == utc(2026, 1, 1, 10)


def test_a_long_cron_outage_is_bounded_and_still_finds_the_latest_tick() -> None:
    sched = parse_schedule("* * * * * *")  # every second, down for a day: 86,400 ticks
    plan = plan_ticks(sched, next_run_at=utc(2026, 1, 1), now=utc(2026, 1, 2, 0, 0, 0, 500), policy="all",
                      catch_up_cap=3, grace=timedelta(seconds=60))
    assert plan.run == [utc(2026, 1, 1, 23, 59, 58), utc(2026, 1, 1, 23, 59, 59), utc(2026, 1, 2)]
    assert plan.next_run_at == utc(2026, 1, 2, 0, 0, 1)
    assert plan.missed >= 9_997
