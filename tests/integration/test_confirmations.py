"""Hazard confirmations on the real PostgreSQL and Mosquitto, with the bridge simulator answering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from hub.confirmations import hash_pin
from hub.contracts import ConfirmationError, DeviceAction, Principal
from tests.support.hubs import devices_config, devices_hub
from tests.support.mqtt import TestClient
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

PLUGINS = ("handlers.devices", "handlers.confirmations")
UNLOCK = DeviceAction("front_door", "unlock")
PIN = "4711"


def _config(db_dsn: str, state_dir: Path, **hazards):
    return devices_config(dsn=db_dsn, state_dir=state_dir, plugins=PLUGINS,
                          hazards={"pin_hash": hash_pin(PIN), "max_pin_failures": 3, "lockout_s": 60, **hazards})


@asynccontextmanager
async def _rig(db_dsn: str, state_dir: Path,
               unlock: tuple[str, float] | None = None) -> AsyncIterator[tuple[Any, Any, Any]]:
    """A hub with the devices and confirmations plugins (``unlock``: the unlock class's level and timeout),
    the front door's set topic watched, and the confirmation service."""
    hazards = {"classes": {"lock.unlock": {"level": unlock[0], "timeout_s": unlock[1]}}} if unlock else {}
    config = _config(db_dsn, state_dir, **hazards)
    async with devices_hub(config) as run, TestClient(config.mqtt.port) as watcher:
        yield run, await watcher.collect(_set_topic(run)), run.hub.services.confirmations


def _set_topic(run) -> str:
    return f"{run.config.devices['front_door'].model_extra['base_topic']}/front_door/set"


async def _events(run, cid: str) -> list[str]:
    rows = await run.hub.store.fetch("SELECT kind FROM events WHERE correlation_id = $1 ORDER BY id", cid)
    return [r["kind"] for r in rows]


async def test_voice_request_is_executed_once_only_for_its_own_session(db_dsn: str, state_dir: Path) -> None:
    async with _rig(db_dsn, state_dir) as (run, commands, service):
        asker = Principal(kind="voice", site="kitchen", session_id="s1")
        told: list[tuple[str, str]] = []
        service.subscribe(lambda conf: told.append((conf.id, conf.state)))
        c = await service.request(UNLOCK, hazard_class="lock.unlock", principal=asker)
        assert c.state == "pending" and c.prompt == "Are you sure you want to unlock the front door?"

        for stranger in (Principal(kind="voice", site="bedroom", session_id="s1"),
                         Principal(kind="voice", site="kitchen", session_id="s2"),
                         Principal(kind="agent", user="mcp")):
            with pytest.raises(ConfirmationError) as err:
                await service.approve(c.id, principal=stranger)
            assert err.value.reason in ("wrong_principal", "agent_cannot_approve")
        await asyncio.sleep(0.5)
        assert commands.messages == [], "nothing may be published before a valid yes"

        done = await service.approve(c.id, principal=asker)
        assert done.state == "executing"
        with pytest.raises(ConfirmationError) as again:
            await service.approve(c.id, principal=asker)  # a duplicate yes
        assert again.value.reason == "not_pending"

        msgs = await commands.wait_for(1, timeout=10)
        await asyncio.sleep(0.5)
        assert len(commands.messages) == 1
        assert msgs[0].json() == {"state": "UNLOCK"}
        assert msgs[0].user_properties["id"] == f"confirm:{c.id}"
        for _ in range(50):  # the simulator reports UNLOCKED → done
            if (await service.get(c.id)).state == "done":
                break
            await asyncio.sleep(0.1)
        assert (await service.get(c.id)).state == "done"
        kinds = await _events(run, c.id)
        assert kinds[:1] == ["confirmation.requested"]
        assert kinds.count("security.confirmation_refused") == 3
        steps = [k for k in kinds if k.startswith("confirmation.")]
        assert steps == ["confirmation.requested", "confirmation.confirmed", "confirmation.executing",
                         "confirmation.done"]
        # Listeners (web panel, Home Assistant, voice) hear every step, in order, each with its own state.
        await eventually(lambda: ("done" in [state for cid, state in told if cid == c.id]), timeout=10)
        assert [state for cid, state in told if cid == c.id] == ["pending", "confirmed", "executing", "done"]


async def test_concurrent_approvals_execute_exactly_once(db_dsn: str, state_dir: Path) -> None:
    async with _rig(db_dsn, state_dir) as (run, commands, service):
        c = await service.request(UNLOCK, hazard_class="lock.unlock", principal=Principal(kind="user", user="web"))
        people = [Principal(kind="user", user=f"u{i}") for i in range(8)]
        results = await asyncio.gather(*(service.approve(c.id, principal=p) for p in people),
                                       return_exceptions=True)
        assert sum(1 for r in results if not isinstance(r, Exception)) == 1
        assert all(r.reason == "not_pending" for r in results if isinstance(r, ConfirmationError))
        await commands.wait_for(1, timeout=10)
        await asyncio.sleep(0.7)
        assert len(commands.messages) == 1
        rows = await run.hub.store.fetch("SELECT count(*) AS n FROM outbox WHERE idempotency_key = $1",
                                         f"confirm:{c.id}")
        assert rows[0]["n"] == 1


async def test_pin_lockout_then_the_right_pin_executes_once(db_dsn: str, state_dir: Path) -> None:
    async with _rig(db_dsn, state_dir, unlock=("pin", 60)) as (run, commands, service):
        person = Principal(kind="user", user="web")
        c = await service.request(UNLOCK, hazard_class="lock.unlock", principal=person)
        assert c.level == "pin"
        with pytest.raises(ConfirmationError) as no_pin:
            await service.approve(c.id, principal=person)
        assert no_pin.value.reason == "pin_required"
        reasons = []
        for _ in range(3):
            with pytest.raises(ConfirmationError) as wrong:
                await service.approve(c.id, principal=person, pin="0000")
            reasons.append(wrong.value.reason)
        assert reasons == ["pin_wrong", "pin_wrong", "locked_out"]
        with pytest.raises(ConfirmationError) as locked:
            await service.approve(c.id, principal=person, pin=PIN)  # right PIN, but locked out
        assert locked.value.reason == "locked_out"
        assert commands.messages == []
        # The lockout ends (fast-forwarded in the database, as time would), then the right PIN works once.
        await run.hub.store.write("UPDATE pin_attempts SET locked_until = now() - interval '1 second'")
        done = await service.approve(c.id, principal=person, pin=PIN)
        assert done.state == "executing"
        await commands.wait_for(1, timeout=10)
        await asyncio.sleep(0.5)
        assert len(commands.messages) == 1
        stored = await run.hub.store.fetchval("SELECT count(*) FROM events WHERE body::text LIKE '%' || $1 || '%'",
                                              PIN)
        assert stored == 0, "the PIN must never be written anywhere"


async def test_expired_confirmation_publishes_nothing(db_dsn: str, state_dir: Path) -> None:
    async with _rig(db_dsn, state_dir, unlock=("ack", 0.5)) as (_run, commands, service):
        seen: list[str] = []
        service.subscribe(lambda conf: seen.append(conf.state))
        asker = Principal(kind="voice", site="kitchen", session_id="s9")
        c = await service.request(UNLOCK, hazard_class="lock.unlock", principal=asker)
        for _ in range(40):
            if (await service.get(c.id)).state == "expired":
                break
            await asyncio.sleep(0.1)
        assert (await service.get(c.id)).state == "expired"
        with pytest.raises(ConfirmationError) as late:
            await service.approve(c.id, principal=asker)
        assert late.value.reason == "not_pending"
        await asyncio.sleep(0.3)
        assert commands.messages == []
        assert "expired" in seen  # listeners heard the committed transition


async def test_an_approval_of_a_confirmation_requested_here_is_one_statement(db_dsn: str, state_dir: Path) -> None:
    # Requested by this instance: its binding is checked from memory and the approval, with its command, is one
    # statement. Expired before the answer: that statement writes nothing and the transaction path says why.
    async with _rig(db_dsn, state_dir, unlock=("ack", 2)) as (run, commands, service):
        transactions: list[str] = []
        real = service._command_transaction

        def counted():
            transactions.append("tx")
            return real()
        service._command_transaction = counted
        asker = Principal(kind="voice", site="kitchen", session_id="s7")
        c = await service.request(UNLOCK, hazard_class="lock.unlock", principal=asker)
        assert (await service.approve(c.id, principal=asker)).state == "executing"
        assert transactions == []
        msgs = await commands.wait_for(1, timeout=10)
        assert msgs[0].json() == {"state": "UNLOCK"} and msgs[0].user_properties["id"] == f"confirm:{c.id}"
        events = await run.hub.store.fetch("SELECT kind FROM events WHERE correlation_id = $1 ORDER BY id", c.id)
        kinds = [e["kind"] for e in events]
        assert [k for k in kinds if k.startswith("confirmation.")][:3] == [
            "confirmation.requested", "confirmation.confirmed", "confirmation.executing"]
        assert kinds.count("device.command") == 1

        late = await service.request(UNLOCK, hazard_class="lock.unlock", principal=asker)
        await run.hub.store.write("UPDATE confirmations SET expires_at = now() WHERE id = $1", late.id)
        with pytest.raises(ConfirmationError) as refused:
            await service.approve(late.id, principal=asker)
        assert refused.value.reason in ("expired", "not_pending") and transactions == ["tx"]
        assert (await service.get(late.id)).state == "expired"
        await commands.settle(0.5)
        assert len(commands.messages) == 1  # nothing for the expired one


async def test_approve_and_cancel_over_the_mqtt_confirm_topic(db_dsn: str, state_dir: Path) -> None:
    config = _config(db_dsn, state_dir)
    async with devices_hub(config) as run, TestClient(config.mqtt.port) as client:
        commands = await client.collect(_set_topic(run))
        results = await client.collect(f"kitt/{config.hub.id}/confirm/+/result")
        service = run.hub.services.confirmations
        a = await service.request(UNLOCK, hazard_class="lock.unlock", principal=Principal(kind="user", user="web"))
        b = await service.request(UNLOCK, hazard_class="lock.unlock", principal=Principal(kind="user", user="web"))
        await client.publish(f"kitt/{config.hub.id}/confirm/{b.id}", "cancel")
        await client.publish(f"kitt/{config.hub.id}/confirm/{a.id}", '{"action": "approve"}')
        await client.publish(f"kitt/{config.hub.id}/confirm/{a.id}", "nonsense")
        got = await results.wait_for(2, timeout=10)
        by_id = {m.json()["id"]: m.json() for m in got}
        assert by_id[a.id]["ok"] and by_id[a.id]["state"] == "executing"
        assert by_id[b.id]["ok"] and by_id[b.id]["state"] == "cancelled"
        await commands.wait_for(1, timeout=10)
        await asyncio.sleep(0.5)
        assert len(commands.messages) == 1
        rejected = await run.hub.store.fetchval("SELECT count(*) FROM events WHERE kind = 'input.rejected'")
        assert rejected == 1
