"""Hub crashes in the middle of a hazard dialogue (the hub as a real process, SIGKILLed).

- between the question and the answer: after the restart the question is asked again on the same site and
  session ("Sorry, I was interrupted. …", no new sessionStarted); "yes" → exactly one unlock;
- the answer sent while the hub is down (queued by the broker for the hub's persistent session) is taken;
- a crash right after confirmed → executing committed (KITT_TEST_CRASH_AFTER=confirm_executing): after the
  restart exactly one unlock, from the outbox, never two, and the result is said;
- a restart after the confirm deadline: the dialogue ends with a timeout and a late "yes" does nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devices.simulator import Simulator
from hub.config import Config
from tests.support.db import fetch
from tests.support.hermes_hub import base_topic_of, voice_config_dict
from tests.support.hermes_sat import Satellite, unique_site
from tests.support.hubproc import HubProcess
from tests.support.mqtt import Collector, TestClient

pytestmark = pytest.mark.fault

SAY = "hermes/tts/say"
LISTEN = "hermes/asr/startListening"
ENDED = "hermes/dialogueManager/sessionEnded"
STARTED = "hermes/dialogueManager/sessionStarted"


@dataclass
class ProcRig:
    hub: HubProcess
    sat: Satellite
    commands: Collector
    dsn: str
    site: str

    def unlock_keys(self) -> list[str]:
        return [m.user_properties.get("id", "") for m in self.commands.messages]

    async def restart(self) -> None:
        await asyncio.to_thread(self.hub.kill)
        await asyncio.to_thread(self.hub.start)

    async def question(self, session: str) -> str:
        await self.sat.hotword(self.site, session)
        await self.sat.wait(LISTEN, site=self.site, session=session, timeout=15)
        await self.sat.text(self.site, session, "unlock the front door")
        q = await self.sat.wait(SAY, site=self.site, session=session, timeout=15)
        return q.body["id"].removesuffix(":q1")

    async def spoken(self, session: str, say_id: str) -> None:
        mark = self.sat.mark
        await self.sat.say_finished(self.site, session, say_id)
        listen = await self.sat.wait(LISTEN, site=self.site, session=session, since=mark, timeout=15)
        assert listen.body["intentFilter"] == ["ConfirmYes", "ConfirmNo"]


@contextmanager
def crash_hook(value: str | None) -> Iterator[None]:
    """The lead's test hook: the hub process reads KITT_TEST_CRASH_AFTER from its environment."""
    old = os.environ.pop("KITT_TEST_CRASH_AFTER", None)
    if value is not None:
        os.environ["KITT_TEST_CRASH_AFTER"] = value
    try:
        yield
    finally:
        os.environ.pop("KITT_TEST_CRASH_AFTER", None)
        if old is not None:
            os.environ["KITT_TEST_CRASH_AFTER"] = old


@asynccontextmanager
async def proc_rig(dsn: str, workdir: Path, *, voice: dict[str, Any] | None = None,
                   crash_after: str | None = None) -> AsyncIterator[ProcRig]:
    site = unique_site("kitchen")
    cfg = voice_config_dict(dsn=dsn, state_dir=workdir / "state", sites=(site, unique_site("bedroom")),
                            voice=voice)
    hub = HubProcess(cfg, workdir)
    async with Simulator(Config.model_validate(cfg), devices=["front_door"]) as _sim, TestClient(1883) as client:
        sat = await Satellite.open(client, (site,))
        commands = await client.collect(f"{base_topic_of(cfg)}/front_door/set", qos=2)
        with crash_hook(crash_after):
            await asyncio.to_thread(hub.start)
        try:
            yield ProcRig(hub, sat, commands, dsn, site)
        finally:
            await asyncio.to_thread(hub.kill)


async def test_kill_between_question_and_answer_reasks_and_unlocks_once(db_dsn: str, tmp_path: Path) -> None:
    async with proc_rig(db_dsn, tmp_path) as rig:
        cid = await rig.question("t5")
        await rig.spoken("t5", f"{cid}:q1")
        mark = rig.sat.mark
        await rig.restart()
        again = await rig.sat.wait(SAY, site=rig.site, session="t5", since=mark, timeout=15)
        assert again.body["text"] == "Sorry, I was interrupted. Are you sure you want to unlock the front door?"
        assert again.body["id"] == f"{cid}:r1"
        assert rig.sat.heard(STARTED, site=rig.site, since=mark) == []
        await rig.spoken("t5", f"{cid}:r1")
        await rig.sat.text(rig.site, "t5", "yes")
        await rig.sat.wait(SAY, site=rig.site, session="t5", since=mark, where=lambda b: b["id"].endswith(":done"),
                           timeout=15)
        await rig.commands.settle(0.5)
        assert rig.unlock_keys() == [f"confirm:{cid}"]
        assert json.loads(rig.commands.messages[0].payload)["state"] == "UNLOCK"


async def test_an_answer_queued_while_the_hub_was_down_is_taken(db_dsn: str, tmp_path: Path) -> None:
    async with proc_rig(db_dsn, tmp_path) as rig:
        cid = await rig.question("q5")
        await rig.spoken("q5", f"{cid}:q1")
        await asyncio.to_thread(rig.hub.kill)
        await rig.sat.text(rig.site, "q5", "yes")   # QoS 1: the broker keeps it for the hub's session
        mark = rig.sat.mark
        await asyncio.to_thread(rig.hub.start)
        await rig.sat.wait(SAY, site=rig.site, session="q5", since=mark, where=lambda b: b["id"].endswith(":done"),
                           timeout=15)
        await rig.commands.settle(0.5)
        assert rig.unlock_keys() == [f"confirm:{cid}"]


async def test_crash_right_after_executing_commits_unlocks_once_from_the_outbox(db_dsn: str, tmp_path: Path) -> None:
    async with proc_rig(db_dsn, tmp_path, crash_after="confirm_executing") as rig:
        cid = await rig.question("t5c")
        await rig.spoken("t5c", f"{cid}:q1")
        await rig.sat.text(rig.site, "t5c", "yes")
        code = await asyncio.to_thread(rig.hub.proc.wait, 15)  # type: ignore[union-attr]
        assert code == 137
        rows = await fetch(db_dsn, "SELECT state FROM confirmations WHERE id = $1", cid)
        assert rows[0]["state"] == "executing"
        mark = rig.sat.mark
        with crash_hook(None):
            await asyncio.to_thread(rig.hub.start)
        result = await rig.sat.wait(SAY, site=rig.site, session="t5c", since=mark, timeout=20)
        await rig.commands.settle(0.5)
        assert rig.unlock_keys() == [f"confirm:{cid}"]
        # AC5(c): the outcome comes from the device's reported state (the simulator did unlock).
        assert result.body["text"] == "The front door is unlocked."
        assert rig.sat.heard(STARTED, site=rig.site, since=mark) == []
        await rig.sat.say_finished(rig.site, "t5c", result.body["id"])
        ended = await rig.sat.wait(ENDED, site=rig.site, session="t5c", since=mark)
        assert ended.body["termination"] == {"reason": "nominal"}
        await rig.restart()  # and once more: still never a second command
        await rig.commands.settle(1.0)
        assert rig.unlock_keys() == [f"confirm:{cid}"]


async def test_restart_after_the_deadline_ends_with_timeout(db_dsn: str, tmp_path: Path) -> None:
    async with proc_rig(db_dsn, tmp_path, voice={"confirm_timeout_s": 1}) as rig:
        cid = await rig.question("t5b")
        await rig.spoken("t5b", f"{cid}:q1")
        await asyncio.to_thread(rig.hub.kill)
        await asyncio.sleep(1.5)
        mark = rig.sat.mark
        await asyncio.to_thread(rig.hub.start)
        ended = await rig.sat.wait(ENDED, site=rig.site, session="t5b", since=mark, timeout=15)
        assert ended.body["termination"] == {"reason": "timeout"}
        await rig.sat.wait("hermes/hotword/toggleOn", site=rig.site, since=mark)
        await rig.sat.text(rig.site, "t5b", "yes")
        await rig.commands.settle(1.0)
        assert rig.unlock_keys() == []
        rows = await fetch(db_dsn, "SELECT state FROM confirmations WHERE id = $1", cid)
        assert rows[0]["state"] == "expired"
