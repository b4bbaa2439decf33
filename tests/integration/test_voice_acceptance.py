"""hermes-voice.md §7 acceptance checks AC1 and AC2 (AC3/AC4: test_voice_hazard.py; AC5: tests/fault), plus the
site allow-list and notification sessions, against a real broker, PostgreSQL, the simulator and an in-process hub.

Intent names are the understanding service's (Home Assistant's): "turn on the kitchen light" is HassTurnOn,
"turn off the light" HassTurnOff, yes/no are ConfirmYes/ConfirmNo. Device commands go to the bridge's own
topic (Zigbee2MQTT ``<base>/<device>/set``), not §7's ``home/cmd/…``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devices.simulator import Simulator
from hub.config import Config
from tests.support.hermes_hub import base_topic_of, running_hub, voice_config_dict
from tests.support.hermes_sat import Satellite, unique_site
from tests.support.mqtt import Collector, TestClient

pytestmark = pytest.mark.integration


@dataclass
class Rig:
    sat: Satellite
    light: Collector
    client: TestClient
    kitchen: str
    config: dict[str, Any]


@asynccontextmanager
async def make_rig(db_dsn: str, state_dir: Path, voice: dict[str, Any] | None = None) -> AsyncIterator[Rig]:
    kitchen = unique_site("kitchen")
    cfg = voice_config_dict(dsn=db_dsn, state_dir=state_dir, sites=(kitchen, unique_site("bedroom")), voice=voice)
    async with Simulator(Config.model_validate(cfg), devices=["kitchen_light"]) as _sim, running_hub(cfg), \
            TestClient(1883) as client:
        sat = await Satellite.open(client, (kitchen, "intruder"))
        light = await client.collect(f"{base_topic_of(cfg)}/kitchen_light/set", qos=2)
        yield Rig(sat, light, client, kitchen, cfg)


def in_order(topics: list[str], expected: list[str]) -> bool:
    it = iter(topics)
    return all(any(t == e for t in it) for e in expected)


async def test_ac1_single_turn_intent_in_hermes_order(db_dsn: str, state_dir: Path) -> None:
    async with make_rig(db_dsn, state_dir) as rig:
        k = rig.kitchen
        await rig.sat.hotword(k, "t1")
        await rig.sat.wait("hermes/asr/startListening", site=k, session="t1")
        opening = [h.topic for h in rig.sat.heard(site=k) if h.topic != "hermes/hotword/porcupine/detected"]
        assert opening == ["hermes/dialogueManager/sessionStarted", "hermes/hotword/toggleOff",
                           "hermes/asr/startListening"]
        assert rig.sat.heard("hermes/hotword/toggleOff", site=k)[0].body == {"siteId": k,
                                                                             "reason": "dialogueSession"}
        mark = rig.sat.mark
        await rig.sat.text(k, "t1", "turn on the kitchen light")
        say = await rig.sat.wait("hermes/tts/say", site=k, session="t1", since=mark)
        topics = [h.topic for h in rig.sat.heard(site=k, since=mark)]
        assert in_order(topics, ["hermes/asr/stopListening", "hermes/nlu/intentParsed", "hermes/intent/HassTurnOn",
                                 "hermes/tts/say"])
        intent = rig.sat.heard("hermes/intent/HassTurnOn", site=k, since=mark)[0].body
        assert intent["intent"]["intentName"] == "HassTurnOn" and intent["intent"]["confidenceScore"] >= 0.8
        assert (intent["input"], intent["sessionId"]) == ("turn on the kitchen light", "t1")
        cmd = (await rig.light.wait_for(1, timeout=5))[0]
        assert json.loads(cmd.payload)["state"] == "ON"
        end_mark = rig.sat.mark
        await rig.sat.say_finished(k, "t1", say.body["id"])
        ended = await rig.sat.wait("hermes/dialogueManager/sessionEnded", site=k, session="t1", since=end_mark)
        assert ended.body["termination"] == {"reason": "nominal"}
        on = await rig.sat.wait("hermes/hotword/toggleOn", site=k, since=end_mark)
        assert on.body == {"siteId": k, "reason": "dialogueSession"} and on.at >= ended.at
        await rig.light.settle(0.3)
        assert len(rig.light.messages) == 1


async def test_ac2_external_app_continues_and_ends_the_session(db_dsn: str, state_dir: Path) -> None:
    async with make_rig(db_dsn, state_dir, voice={"external_intents": ["HassTurnOff"]}) as rig:
        k = rig.kitchen
        await rig.sat.hotword(k, "t2")
        await rig.sat.wait("hermes/asr/startListening", site=k, session="t2")
        await rig.sat.text(k, "t2", "turn off the light")
        intent = await rig.sat.wait("hermes/intent/HassTurnOff", site=k, session="t2")
        assert intent.body["input"] == "turn off the light"
        question = "Do you really want to turn off the light?"
        mark = rig.sat.mark
        await rig.sat.send("hermes/dialogueManager/continueSession", {
            "sessionId": "t2", "text": question, "customData": "TurnOffLight",
            "intentFilter": ["ConfirmYes", "ConfirmNo"], "sendIntentNotRecognized": False})
        say = await rig.sat.wait("hermes/tts/say", site=k, session="t2", since=mark)
        assert say.body["text"] == question
        assert rig.sat.heard("hermes/asr/startListening", site=k, session="t2", since=mark) == []
        await rig.sat.say_finished(k, "t2", say.body["id"])
        listen = await rig.sat.wait("hermes/asr/startListening", site=k, session="t2", since=mark)
        assert listen.body["intentFilter"] == ["ConfirmYes", "ConfirmNo"]
        await rig.sat.text(k, "t2", "yes")
        yes = await rig.sat.wait("hermes/intent/ConfirmYes", site=k, session="t2", since=mark)
        assert yes.body["customData"] == "TurnOffLight"
        mark = rig.sat.mark
        await rig.sat.send("hermes/dialogueManager/endSession",
                           {"sessionId": "t2", "text": "OK, turning off the light"})
        bye = await rig.sat.wait("hermes/tts/say", site=k, session="t2", since=mark)
        assert bye.body["text"] == "OK, turning off the light"
        assert rig.sat.heard("hermes/dialogueManager/sessionEnded", site=k, since=mark) == []
        await rig.sat.say_finished(k, "t2", bye.body["id"])
        ended = await rig.sat.wait("hermes/dialogueManager/sessionEnded", site=k, session="t2", since=mark)
        assert ended.body["termination"] == {"reason": "nominal"}
        await rig.light.settle(0.3)
        assert rig.light.messages == []  # the external app owns TurnOff: the hub did not act


async def test_ac2_silent_external_handler_times_out(db_dsn: str, state_dir: Path) -> None:
    async with make_rig(db_dsn, state_dir, voice={"external_intents": ["HassTurnOff"],
                                                          "handler_timeout_s": 0.5}) as rig:
        await rig.sat.hotword(rig.kitchen, "t2b")
        await rig.sat.wait("hermes/asr/startListening", site=rig.kitchen, session="t2b")
        await rig.sat.text(rig.kitchen, "t2b", "turn off the light")
        ended = await rig.sat.wait("hermes/dialogueManager/sessionEnded", site=rig.kitchen, session="t2b")
        assert ended.body["termination"] == {"reason": "timeout"}


async def test_sites_outside_the_allow_list_are_ignored(db_dsn: str, state_dir: Path) -> None:
    async with make_rig(db_dsn, state_dir) as rig:
        await rig.sat.hotword("intruder", "x1")
        await rig.sat.text("intruder", "x1", "turn on the kitchen light")
        await rig.sat.hotword(rig.kitchen, "ok1")  # a marker: the hub has handled what came before it
        await rig.sat.wait("hermes/dialogueManager/sessionStarted", site=rig.kitchen, session="ok1")
        assert [h.topic for h in rig.sat.heard(site="intruder") if not h.topic.startswith("hermes/hotword/p")
                and h.topic != "hermes/asr/textCaptured"] == []
        assert rig.light.messages == []


async def test_notification_session_speaks_and_ends(db_dsn: str, state_dir: Path) -> None:
    async with make_rig(db_dsn, state_dir) as rig:
        k = rig.kitchen
        await rig.sat.send("hermes/dialogueManager/startSession",
                           {"siteId": k, "init": {"type": "notification", "text": "Dinner is ready"}})
        say = await rig.sat.wait("hermes/tts/say", site=k)
        assert say.body["text"] == "Dinner is ready"
        await rig.sat.say_finished(k, say.body["sessionId"], say.body["id"])
        ended = await rig.sat.wait("hermes/dialogueManager/sessionEnded", site=k, session=say.body["sessionId"])
        assert ended.body["termination"] == {"reason": "nominal"}
