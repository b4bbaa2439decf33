import asyncio

from hub.readiness import Readiness


async def test_required_checks_gate_readiness_and_reasons_are_kept() -> None:
    r = Readiness()
    r.add("store", lambda: True)
    r.add("spine", lambda: "MQTT broker not connected")
    r.add("model", lambda: "loading", required=False)
    ready, results = await r.evaluate()
    assert not ready
    assert {c.name: (c.ok, c.reason, c.required) for c in results} == {
        "store": (True, "ok", True), "spine": (False, "MQTT broker not connected", True),
        "model": (False, "loading", False)}


async def test_a_check_that_raises_is_a_failed_check() -> None:
    r = Readiness()
    r.add("store", lambda: 1 / 0)
    ready, results = await r.evaluate()
    assert not ready and results[0].reason.startswith("ZeroDivisionError")


async def test_checks_added_while_evaluating_do_not_break_it() -> None:
    r = Readiness()

    async def slow() -> bool:
        await asyncio.sleep(0.01)
        return True

    r.add("store", slow)
    evaluation = asyncio.create_task(r.evaluate())
    await asyncio.sleep(0)
    r.add("jobs", lambda: True, required=False)  # the hub adds checks as components come up
    ready, _ = await evaluation
    assert ready
