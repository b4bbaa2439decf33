"""The state tracker: only real changes count, availability combines with the bridge's, waiters wake."""

from __future__ import annotations

import asyncio

from devices.state import StateTracker
from hub.contracts import DeviceAction


def test_repeated_reports_change_nothing() -> None:
    t = StateTracker(["lamp"])
    seen = []
    t.subscribe(lambda name, s: seen.append(dict(s.state)))
    assert t.apply("lamp", state={"state": "ON"}).state == {"state": "ON"}
    assert t.apply("lamp", state={"state": "ON"}).empty
    assert t.apply("lamp", state={"state": "ON", "brightness": 40}).state == {"brightness": 40}
    assert seen == [{"state": "ON"}, {"state": "ON", "brightness": 40}]


def test_bridge_offline_makes_its_devices_unavailable() -> None:
    t = StateTracker(["lamp"])
    assert t.get("lamp").available is None
    t.apply("lamp", available=True)
    change = t.apply("lamp", bridge_available=False)
    assert change.available_changed and t.get("lamp").available is False
    t.apply("lamp", bridge_available=True)
    assert t.get("lamp").available is True


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    t = StateTracker(["lamp"])
    seen = []

    def broken(name, s):
        raise RuntimeError("bug")

    t.subscribe(broken)
    undo = t.subscribe(lambda name, s: seen.append(name))
    t.apply("lamp", state={"state": "OFF"})
    undo()
    t.apply("lamp", state={"state": "ON"})
    assert seen == ["lamp"]


async def test_wait_for_wakes_on_the_target_and_times_out_otherwise() -> None:
    t = StateTracker(["door"])
    waiter = asyncio.create_task(t.wait_for(DeviceAction("door", "lock"), 5))
    await asyncio.sleep(0)
    t.apply("door", state={"lock": "UNLOCKED"})
    await asyncio.sleep(0)
    assert not waiter.done()
    t.apply("door", state={"lock": "LOCKED"})
    assert await waiter is True
    assert t.reached(DeviceAction("door", "unlock")) is False
    assert await t.wait_for(DeviceAction("door", "unlock"), 0.01) is False
