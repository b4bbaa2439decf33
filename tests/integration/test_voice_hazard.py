"""The hazard confirmation dialogue end to end: real Mosquitto, PostgreSQL, the device simulator, an in-process hub.

Issue 6 "done means": "unlock the front door" → a question and no lock command; "yes" in the same session →
exactly one {"state": "UNLOCK"} on zigbee2mqtt/front_door/set; "yes" from another site or session → refused
(a security event), nothing published; an answer after expiry → nothing, the session ends with a timeout.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devices.simulator import Simulator
from hub.app import Hub
from hub.config import Config
from tests.support.db import fetch
from tests.support.hermes_hub import base_topic_of, running_hub, voice_config_dict
from tests.support.hermes_sat import Satellite, unique_site
from tests.support.mqtt import Collector, TestClient

pytestmark = pytest.mark.integration

SAY = "hermes/tts/say"
LISTEN = "hermes/asr/startListening"
ENDED = "hermes/dialogueManager/sessionEnded"


@dataclass
class Rig:
    hub: Hub
    sat: Satellite
    commands: Collector
    dsn: str
    kitchen: str
    bedroom: str
    config: dict[str, Any]

    def unlocks(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.commands.messages]

    async def question(self, session: str, *, text: str = "unlock the front door") -> str:
        await self.sat.hotword(self.kitchen, session)
        await self.sat.wait(LISTEN, site=self.kitchen, session=session)
        await self.sat.text(self.kitchen, session, text)
        q = await self.sat.wait(SAY, site=self.kitchen, session=session)
        assert q.body["text"] == "Are you sure you want to unlock the front door?"
        assert q.body["id"].endswith(":q1")
        return q.body["id"].removesuffix(":q1")

    async def spoken(self, session: str, cid: str) -> None:
        mark = self.sat.mark
        await self.sat.say_finished(self.kitchen, session, f"{cid}:q1")
        listen = await self.sat.wait(LISTEN, site=self.kitchen, session=session, since=mark)
        assert listen.body["intentFilter"] == ["ConfirmYes", "ConfirmNo"]

    async def refused_events(self, cid: str) -> list[dict[str, Any]]:
        rows = await fetch(self.dsn, "SELECT body FROM events WHERE kind = 'security.confirmation_refused' "
                                     "AND correlation_id = $1 ORDER BY id", cid)
        return [r["body"] if isinstance(r["body"], dict) else json.loads(r["body"]) for r in rows]


@asynccontextmanager
async def make_rig(db_dsn: str, state_dir: Path, *, base_topic: str | None = None,
                   voice: dict[str, Any] | None = None) -> AsyncIterator[Rig]:
    kitchen, bedroom = unique_site("kitchen"), unique_site("bedroom")
    cfg = voice_config_dict(dsn=db_dsn, state_dir=state_dir, sites=(kitchen, bedroom), base_topic=base_topic,
                            voice=voice)
    async with Simulator(Config.model_validate(cfg), devices=["front_door", "kitchen_light"]) as _sim, \
            running_hub(cfg) as hub, TestClient(1883) as client:
        sat = await Satellite.open(client, (kitchen, bedroom))
        commands = await client.collect(f"{base_topic_of(cfg)}/front_door/set", qos=2)
        yield Rig(hub, sat, commands, db_dsn, kitchen, bedroom, cfg)


@pytest.fixture
async def rig(db_dsn: str, state_dir: Path) -> AsyncIterator[Rig]:
    async with make_rig(db_dsn, state_dir) as r:
        yield r


async def test_unlock_asks_first_and_only_the_bound_session_can_say_yes(db_dsn: str, state_dir: Path) -> None:
    # The literal bridge topic of the issue; other tests' commands are told apart by the idempotency key.
    async with make_rig(db_dsn, state_dir, base_topic="zigbee2mqtt") as rig:
        session = f"t3-{uuid.uuid4().hex[:6]}"
        cid = await rig.question(session)
        await rig.spoken(session, cid)

        def ours() -> list[dict[str, Any]]:
            return [json.loads(m.payload) for m in rig.commands.messages
                    if m.user_properties.get("id") == f"confirm:{cid}"]

        await rig.commands.settle(0.3)
        assert ours() == []
        await rig.sat.text(rig.bedroom, session, "yes")            # the right session from another site
        await rig.sat.text(rig.kitchen, f"t9-{session}", "yes")    # the right site, another session
        await rig.sat.client.flush()
        # Both refusals are audited before anything else happens on the site (one lock per site).
        for _ in range(100):
            if len(await rig.refused_events(cid)) >= 2:
                break
            await rig.commands.settle(0.05)
        # The two refused answers come from different sessions, handled concurrently: their order is free.
        assert sorted(e["reason"] for e in await rig.refused_events(cid)) == ["wrong_session", "wrong_site"]
        assert ours() == []

        mark = rig.sat.mark
        await rig.sat.text(rig.kitchen, session, "yes")
        done = await rig.sat.wait(SAY, site=rig.kitchen, session=session, since=mark, timeout=15)
        assert done.body["text"] == "The front door is unlocked."
        await rig.sat.say_finished(rig.kitchen, session, done.body["id"])
        ended = await rig.sat.wait(ENDED, site=rig.kitchen, session=session, since=mark)
        assert ended.body["termination"] == {"reason": "nominal"}
        await rig.sat.text(rig.kitchen, session, "yes")            # after the end: nothing more
        await rig.commands.settle(0.5)
        assert len(ours()) == 1 and ours()[0]["state"] == "UNLOCK"
        rows = await fetch(db_dsn, "SELECT state FROM confirmations WHERE id = $1", cid)
        assert rows[0]["state"] == "done"


async def test_no_cancels_and_nothing_is_published(rig: Rig) -> None:
    cid = await rig.question("n1")
    await rig.spoken("n1", cid)
    await rig.sat.text(rig.kitchen, "n1", "no")
    said = await rig.sat.wait(SAY, site=rig.kitchen, session="n1", where=lambda b: b["id"].endswith(":no"))
    assert said.body["text"] == "OK, I won't."
    await rig.commands.settle(0.5)
    assert rig.unlocks() == []
    rows = await fetch(rig.dsn, "SELECT state FROM confirmations WHERE id = $1", cid)
    assert rows[0]["state"] == "cancelled"


async def test_answer_after_expiry_publishes_nothing_and_the_session_times_out(db_dsn: str, state_dir: Path) -> None:
    async with make_rig(db_dsn, state_dir, voice={"confirm_timeout_s": 1}) as rig:
        cid = await rig.question("t4")
        mark = rig.sat.mark
        await rig.spoken("t4", cid)
        ended = await rig.sat.wait(ENDED, site=rig.kitchen, session="t4", since=mark, timeout=10)
        assert ended.body["termination"] == {"reason": "timeout"}
        stop = rig.sat.heard("hermes/asr/stopListening", site=rig.kitchen, session="t4", since=mark)
        assert stop and stop[-1].at <= ended.at
        await rig.sat.wait("hermes/hotword/toggleOn", site=rig.kitchen, since=mark)
        late = rig.sat.mark
        await rig.sat.text(rig.kitchen, "t4", "yes")
        await rig.commands.settle(0.7)
        assert rig.unlocks() == []
        assert rig.sat.heard("hermes/dialogueManager/sessionStarted", site=rig.kitchen, since=late) == []
        rows = await fetch(db_dsn, "SELECT state FROM confirmations WHERE id = $1", cid)
        assert rows[0]["state"] == "expired"
        assert [e["reason"] for e in await rig.refused_events(cid)] == ["session_ended"]


async def test_a_qos1_duplicate_yes_has_no_second_effect(rig: Rig) -> None:
    cid = await rig.question("d1")
    await rig.spoken("d1", cid)
    await rig.sat.text(rig.kitchen, "d1", "yes")
    await rig.sat.text(rig.kitchen, "d1", "yes")
    await rig.sat.wait(SAY, site=rig.kitchen, session="d1", where=lambda b: b["id"].endswith(":done"), timeout=15)
    await rig.commands.settle(0.5)
    assert len(rig.unlocks()) == 1
