"""Jittered exponential backoff, and the small pure helpers of the routines."""

from __future__ import annotations

import pytest

from hub.jobs.backoff import backoff_delay
from hub.jobs.routines import normalise_probe, parse_frontier_tasks


def test_backoff_doubles_per_attempt_within_the_jitter_band() -> None:
    for attempt, nominal in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0)]:
        low = backoff_delay(attempt, base_s=2, cap_s=1000, rand=lambda: 0.0)
        high = backoff_delay(attempt, base_s=2, cap_s=1000, rand=lambda: 0.999999)
        assert low == pytest.approx(nominal / 2)
        assert nominal / 2 <= high < nominal


def test_backoff_is_capped_and_survives_huge_attempt_numbers() -> None:
    assert backoff_delay(1000, base_s=1, cap_s=60, rand=lambda: 0.999999) < 60
    assert backoff_delay(1000, base_s=1, cap_s=60, rand=lambda: 0.0) == 30


def test_backoff_jitter_spreads_retries() -> None:
    delays = {backoff_delay(3, base_s=1, cap_s=100) for _ in range(50)}
    assert len(delays) > 10
    assert all(2 <= d < 4 for d in delays)


def test_backoff_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, base_s=1, cap_s=2)


def test_normalise_probe_accepts_the_usual_shapes() -> None:
    out = normalise_probe({"store": True, "mqtt": "ok", "vectors": "disk full", "device:oven": False,
                           "cache": {"ok": False, "reason": "redis down"}})
    assert out["store"] == {"ok": True, "reason": None}
    assert out["mqtt"]["ok"] is True
    assert out["vectors"] == {"ok": False, "reason": "disk full"}
    assert out["device:oven"] == {"ok": False, "reason": "unavailable"}
    assert out["cache"] == {"ok": False, "reason": "redis down"}


def test_frontier_tasks_are_parsed_bounded_and_only_notify() -> None:
    text = "1. Check the windows\n- Review lights\n\n* x\n" + "\n".join(f"task {i}" for i in range(10))
    specs = parse_frontier_tasks(text)
    assert [s.title for s in specs[:2]] == ["Check the windows", "Review lights"]
    assert len(specs) == 5
    assert {s.action for s in specs} == {"notify"}
    assert not any(s.hazardous for s in specs)
    assert parse_frontier_tasks(None) == []
