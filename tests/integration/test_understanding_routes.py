"""Routing against the real hub: hazards go to a confirmation (never published directly), unknown requests
go to the frontier (the loopback OpenAI-compatible stub) whose tool calls pass the same gate, and without
a frontier the hub says it can't do that yet.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub.contracts import DeviceAction, Principal
from tests.support.frontier_stub import FrontierStub
from tests.support.hubs import devices_config, devices_hub

pytestmark = pytest.mark.integration

WAIT = 15.0


async def test_unlock_opens_a_confirmation_and_publishes_only_after_approval(db_dsn: str, state_dir: Path) -> None:
    config = devices_config(dsn=db_dsn, state_dir=state_dir)
    async with devices_hub(config) as run:
        await run.devices.wait_for(DeviceAction("front_door", "lock"), WAIT)
        reply = await run.ask("unlock the front door", site="kitchen")
        assert reply["route"] == "confirm" and reply["published"] == 0, reply
        assert reply["confirmation_prompt"] == "Are you sure you want to unlock the front door?"
        assert reply["confirmation_id"] and reply["end_session"] is False
        assert run.sim.commands("front_door") == []
        confirmations = run.hub.services.confirmations
        pending = await confirmations.get(reply["confirmation_id"])
        assert pending.state == "pending" and pending.action == DeviceAction("front_door", "unlock")
        await confirmations.approve(reply["confirmation_id"], principal=Principal(kind="user", site="kitchen",
                                                                                 user="ask"))
        assert await run.devices.wait_for(DeviceAction("front_door", "unlock"), WAIT)
        assert [json.loads(c.payload) for c in run.sim.commands("front_door")] == [{"state": "UNLOCK"}]


async def test_without_a_frontier_unknown_requests_get_a_clear_answer(db_dsn: str, state_dir: Path) -> None:
    config = devices_config(dsn=db_dsn, state_dir=state_dir)
    async with devices_hub(config) as run:
        reply = await run.ask("what is the capital of france")
        assert (reply["route"], reply["text"]) == ("unknown", "I can't do that yet.")
        assert run.sim.commands() == []


async def test_frontier_answers_and_its_tool_calls_pass_the_same_gate(db_dsn: str, state_dir: Path) -> None:
    async with FrontierStub() as stub:
        config = devices_config(dsn=db_dsn, state_dir=state_dir,
                                frontier={"base_url": stub.base_url, "model": "stub", "timeout_s": 5})
        async with devices_hub(config) as run:
            await run.devices.wait_for(DeviceAction("front_door", "lock"), WAIT)
            reply = await run.ask("what is the capital of france")
            assert reply["route"] == "frontier" and reply["text"] == "Stub answer: what is the capital of france"
            assert {t["function"]["name"] for t in stub.requests[-1]["tools"]} == {"device_action", "device_state"}

            stub.reply_with_tool("device_action", device="kitchen_light", action="turn_on")
            reply = await run.ask("it is too dark in here, do something")
            assert reply["route"] == "tool" and reply["published"] == 1, reply
            assert await run.devices.wait_for(DeviceAction("kitchen_light", "turn_on"), WAIT)

            stub.reply_with_tool("device_action", device="front_door", action="unlock")
            reply = await run.ask("my hands are full, let me into the house")
            assert reply["route"] == "confirm" and reply["confirmation_id"], reply
            assert run.sim.commands("front_door") == []

            # Device commands and state questions are never answered from the semantic cache.
            stub.reply_with_tool("device_state", device="front_door")
            reply = await run.ask("tell me about the entrance")
            assert reply["route"] == "tool" and "front door is locked" in reply["text"], reply


async def test_a_failing_frontier_gets_a_clear_sentence(db_dsn: str, state_dir: Path) -> None:
    async with FrontierStub() as stub:
        config = devices_config(dsn=db_dsn, state_dir=state_dir,
                                frontier={"base_url": stub.base_url, "model": "stub", "timeout_s": 5})
        async with devices_hub(config) as run:
            stub.fail(1, status=500)
            reply = await run.ask("what is the capital of france")
            assert reply["route"] == "unknown" and "unreachable" in reply["text"], reply
