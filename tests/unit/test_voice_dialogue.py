"""The dialogue manager against in-memory fakes: ordering, site/session binding, the hazard dialogue, timers,
external apps and restart recovery."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from handlers.voice import topics as T
from handlers.voice.messages import ContinueSession, EndSession, HotwordDetected, SayFinished, TextCaptured
from handlers.voice.session import Phase
from tests.support.hermes_fakes import Harness, make_harness


def hot(site: str, sid: str) -> HotwordDetected:
    return HotwordDetected.model_validate({"modelId": "porcupine", "siteId": site, "sessionId": sid})


def text(site: str, sid: str, words: str, likelihood: float = 0.9) -> TextCaptured:
    return TextCaptured.model_validate({"text": words, "likelihood": likelihood, "seconds": 0.3, "siteId": site,
                                        "sessionId": sid})


def said(site: str, sid: str | None, say_id: str) -> SayFinished:
    return SayFinished.model_validate({"siteId": site, "sessionId": sid, "id": say_id})


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


@pytest.fixture
async def h() -> Harness:
    harness = make_harness()
    yield harness
    await harness.dm.close()


async def test_single_turn_intent_publishes_in_hermes_order(h: Harness) -> None:
    await h.dm.on_hotword(hot("kitchen", "t1"), "porcupine")
    assert h.topics() == [T.SESSION_STARTED, T.HOTWORD_OFF, T.START_LISTENING]
    assert h.last(T.SESSION_STARTED) == {"sessionId": "t1", "siteId": "kitchen", "customData": "porcupine"}
    assert h.last(T.HOTWORD_OFF) == {"siteId": "kitchen", "reason": "dialogueSession"}
    h.clear()
    await h.dm.on_text(text("kitchen", "t1", "turn on the kitchen light"))
    assert h.topics() == [T.STOP_LISTENING, T.INTENT_PARSED, T.intent("HassTurnOn"), T.SAY]
    intent = h.last(T.intent("HassTurnOn"))
    assert intent["intent"] == {"intentName": "HassTurnOn", "confidenceScore": 1.0}
    assert (intent["siteId"], intent["sessionId"], intent["input"]) == ("kitchen", "t1", "turn on the kitchen light")
    say = h.last(T.SAY)
    assert (say["siteId"], say["sessionId"]) == ("kitchen", "t1")
    h.clear()
    await h.dm.on_say_finished(said("kitchen", "t1", say["id"]))
    assert h.topics() == [T.STOP_LISTENING, T.SESSION_ENDED, T.HOTWORD_ON]
    assert h.last(T.SESSION_ENDED)["termination"] == {"reason": "nominal"}
    assert h.last(T.HOTWORD_ON) == {"siteId": "kitchen", "reason": "dialogueSession"}


async def test_text_from_another_site_or_unknown_session_is_dropped(h: Harness) -> None:
    await h.dm.on_hotword(hot("kitchen", "t1"), "porcupine")
    h.clear()
    await h.dm.on_text(text("bedroom", "t1", "turn on the kitchen light"))
    await h.dm.on_text(text("kitchen", "t9", "turn on the kitchen light"))
    assert h.published == []
    assert h.understanding.acted == []


async def hazard_question(h: Harness, site: str = "kitchen", sid: str = "t3") -> str:
    await h.dm.on_hotword(hot(site, sid), "porcupine")
    await h.dm.on_text(text(site, sid, "unlock the front door"))
    say = h.last(T.SAY)
    cid = say["id"].removesuffix(":q1")
    assert say["id"] == f"{cid}:q1" and cid in h.confirmations.rows
    assert say["text"] == "Are you sure you want to unlock the front door?"
    return cid


async def test_hazard_asks_binds_to_site_and_session_and_approves_once(h: Harness) -> None:
    cid = await hazard_question(h)
    assert h.confirmations.approved == []
    h.clear()
    await h.dm.on_say_finished(said("kitchen", "t3", f"{cid}:q1"))
    assert h.last(T.START_LISTENING) == {"siteId": "kitchen", "sessionId": "t3",
                                         "intentFilter": ["ConfirmYes", "ConfirmNo"], "stopOnSilence": True,
                                         "sendAudioCaptured": False}
    assert h.rows.rows[("kitchen", "t3")]["armed"] == h.dm._cfg.confirm_timeout_s
    h.clear()
    await h.dm.on_text(text("bedroom", "t3", "yes"))     # right session, wrong site
    await h.dm.on_text(text("kitchen", "t9", "yes"))     # right site, wrong session
    assert h.confirmations.approved == [] and h.published == []
    refused = [e for e in h.events if e[0] == "security.confirmation_refused"]
    assert [e[1]["body"]["reason"] for e in refused] == ["wrong_site", "wrong_session"]
    assert all(e[1]["correlation_id"] == cid for e in refused)
    await h.dm.on_text(text("kitchen", "t3", "yes"))
    await h.dm.on_text(text("kitchen", "t3", "yes"))     # a QoS 1 duplicate that slipped past the inbox
    assert len(h.confirmations.approved) == 1
    principal = h.confirmations.approved[0][1]
    assert (principal.kind, principal.site, principal.session_id) == ("voice", "kitchen", "t3")
    assert h.dm.session("t3").phase == Phase.WAIT_RESULT
    h.clear()
    await h.dm.on_confirmation(h.confirmations.finish(cid, "done"))
    assert h.last(T.SAY)["text"] == "The front door is unlocked."
    await h.dm.on_say_finished(said("kitchen", "t3", f"{cid}:done"))
    assert h.last(T.SESSION_ENDED)["termination"] == {"reason": "nominal"}
    assert h.rows.rows[("kitchen", "t3")]["state"] == "ended"


async def test_no_cancels_and_says_so(h: Harness) -> None:
    cid = await hazard_question(h)
    await h.dm.on_say_finished(said("kitchen", "t3", f"{cid}:q1"))
    await h.dm.on_text(text("kitchen", "t3", "no"))
    assert h.confirmations.rows[cid].state == "cancelled"
    assert h.confirmations.approved == []
    assert h.last(T.SAY)["text"] == "OK, I won't."


async def test_unclear_answer_reasks_once_then_gives_up() -> None:
    h = make_harness()
    cid = await hazard_question(h)
    await h.dm.on_say_finished(said("kitchen", "t3", f"{cid}:q1"))
    await h.dm.on_text(text("kitchen", "t3", "banana"))
    assert h.last(T.SAY)["id"] == f"{cid}:u1"
    await h.dm.on_say_finished(said("kitchen", "t3", f"{cid}:u1"))
    await h.dm.on_text(text("kitchen", "t3", "banana"))
    assert h.last(T.SESSION_ENDED)["termination"] == {"reason": "intentNotRecognized"}
    assert h.confirmations.rows[cid].state == "cancelled"
    await h.dm.close()


async def test_confirm_timer_starts_after_say_finished_and_expires() -> None:
    h = make_harness(confirm_timeout_s=0.05)
    cid = await hazard_question(h)
    await asyncio.sleep(0.1)  # no sayFinished yet: the confirm timer must not be running
    assert h.confirmations.rows[cid].state == "pending"
    await h.dm.on_say_finished(said("kitchen", "t3", f"{cid}:q1"))
    await until(lambda: T.SESSION_ENDED in h.topics())
    assert h.last(T.SESSION_ENDED)["termination"] == {"reason": "timeout"}
    assert h.topics()[-3:] == [T.STOP_LISTENING, T.SESSION_ENDED, T.HOTWORD_ON]
    assert h.confirmations.rows[cid].state == "expired"
    h.clear()
    await h.dm.on_text(text("kitchen", "t3", "yes"))  # late
    assert h.published == [] and h.confirmations.approved == []
    assert h.events[-1][1]["body"]["reason"] == "session_ended"
    await h.dm.close()


async def test_external_intent_waits_for_continue_and_end() -> None:
    h = make_harness(external_intents=("HassTurnOff",))
    await h.dm.on_hotword(hot("kitchen", "t2"), "porcupine")
    await h.dm.on_text(text("kitchen", "t2", "turn off the light"))
    assert T.intent("HassTurnOff") in h.topics() and T.SAY not in h.topics()
    assert h.understanding.acted == []
    await h.dm.on_continue(ContinueSession.model_validate({
        "sessionId": "t2", "text": "Do you really want to turn off the light?", "customData": "TurnOffLight",
        "intentFilter": ["ConfirmYes", "ConfirmNo"]}))
    say = h.last(T.SAY)
    assert (say["text"], say["sessionId"], say["siteId"]) == ("Do you really want to turn off the light?", "t2",
                                                              "kitchen")
    await h.dm.on_say_finished(said("kitchen", "t2", say["id"]))
    assert h.last(T.START_LISTENING)["intentFilter"] == ["ConfirmYes", "ConfirmNo"]
    await h.dm.on_text(text("kitchen", "t2", "yes"))
    yes = h.last(T.intent("ConfirmYes"))
    assert (yes["sessionId"], yes["customData"]) == ("t2", "TurnOffLight")
    await h.dm.on_end(EndSession.model_validate({"sessionId": "t2", "text": "OK, turning off the light"}))
    await h.dm.on_say_finished(said("kitchen", "t2", h.last(T.SAY)["id"]))
    assert h.last(T.SESSION_ENDED)["termination"] == {"reason": "nominal"}
    assert h.understanding.acted == []
    await h.dm.close()


async def test_external_handler_silence_times_out() -> None:
    h = make_harness(external_intents=("HassTurnOff",), handler_timeout_s=0.05)
    await h.dm.on_hotword(hot("kitchen", "t2"), "porcupine")
    await h.dm.on_text(text("kitchen", "t2", "turn off the light"))
    await until(lambda: T.SESSION_ENDED in h.topics())
    assert h.last(T.SESSION_ENDED)["termination"] == {"reason": "timeout"}
    await h.dm.close()


async def test_external_app_cannot_steer_a_confirmation_dialogue(h: Harness) -> None:
    cid = await hazard_question(h)
    h.clear()
    await h.dm.on_end(EndSession.model_validate({"sessionId": "t3"}))
    await h.dm.on_continue(ContinueSession.model_validate({"sessionId": "t3", "text": "hi"}))
    assert h.published == []
    assert h.confirmations.rows[cid].state == "pending"


async def test_wake_word_on_busy_site_aborts_and_cancels_the_confirmation(h: Harness) -> None:
    cid = await hazard_question(h)
    await h.dm.on_hotword(hot("kitchen", "t4"), "porcupine")
    ended = h.of(T.SESSION_ENDED)
    assert ended[-1]["sessionId"] == "t3" and ended[-1]["termination"] == {"reason": "abortedByUser"}
    assert h.confirmations.rows[cid].state == "cancelled"
    assert h.last(T.SESSION_STARTED)["sessionId"] == "t4"


async def test_pin_level_takes_spoken_digits(h: Harness) -> None:
    await h.dm.on_hotword(hot("kitchen", "p1"), "porcupine")
    await h.dm.on_text(text("kitchen", "p1", "disarm the alarm"))
    say = h.last(T.SAY)
    assert say["text"].endswith("Please say your PIN.")
    cid = say["id"].removesuffix(":q1")
    await h.dm.on_say_finished(said("kitchen", "p1", say["id"]))
    assert "intentFilter" not in h.last(T.START_LISTENING)
    await h.dm.on_text(text("kitchen", "p1", "one two three four"))
    assert h.confirmations.approved == [(cid, h.confirmations.approved[0][1])]


async def test_recovery_reasks_once_on_the_same_session_without_a_new_session_started(h: Harness) -> None:
    cid = await hazard_question(h)
    await h.dm.on_say_finished(said("kitchen", "t3", f"{cid}:q1"))
    # A new process: same database rows, empty memory.
    fresh = make_harness()
    fresh.confirmations, fresh.rows = h.confirmations, h.rows
    fresh.dm._deps.services.confirmations = h.confirmations
    fresh.dm._deps.sessions = h.rows
    reask = await fresh.dm.recover(await h.rows.open_sessions(), {"kitchen", "bedroom"})
    await fresh.dm.reask(reask)
    assert T.SESSION_STARTED not in fresh.topics()
    say = fresh.last(T.SAY)
    assert say == {"text": "Sorry, I was interrupted. Are you sure you want to unlock the front door?",
                   "siteId": "kitchen", "sessionId": "t3", "id": f"{cid}:r1", "lang": "en"}
    await fresh.dm.on_say_finished(said("kitchen", "t3", f"{cid}:r1"))
    await fresh.dm.on_text(text("kitchen", "t3", "yes"))
    assert len(h.confirmations.approved) == 1
    await fresh.dm.close()


async def test_recovery_takes_a_queued_answer_instead_of_reasking(h: Harness) -> None:
    cid = await hazard_question(h)
    fresh = make_harness()
    fresh.dm._deps.services.confirmations = h.confirmations
    fresh.dm._deps.sessions = h.rows
    reask = await fresh.dm.recover(await h.rows.open_sessions(), {"kitchen"})
    await fresh.dm.on_text(text("kitchen", "t3", "yes"))
    await fresh.dm.reask(reask)
    assert len(h.confirmations.approved) == 1 and h.confirmations.approved[0][0] == cid
    assert not [p for p in fresh.of(T.SAY) if p["id"].endswith(":r1")]
    await fresh.dm.close()


async def test_recovery_after_the_deadline_ends_with_timeout(h: Harness) -> None:
    cid = await hazard_question(h)
    h.rows.rows[("kitchen", "t3")]["deadline"] = True
    fresh = make_harness()
    fresh.dm._deps.services.confirmations = h.confirmations
    fresh.dm._deps.sessions = h.rows
    assert await fresh.dm.recover(await h.rows.open_sessions(), {"kitchen"}) == []
    assert fresh.topics() == [T.STOP_LISTENING, T.SESSION_ENDED, T.HOTWORD_ON]
    assert fresh.last(T.SESSION_ENDED) == {"sessionId": "t3", "siteId": "kitchen",
                                           "customData": f'{{"pendingAction": "{cid}"}}',
                                           "termination": {"reason": "timeout"}}
    assert h.confirmations.rows[cid].state == "expired"
    await fresh.dm.on_text(text("kitchen", "t3", "yes"))
    assert h.confirmations.approved == []
    await fresh.dm.close()


async def test_recovery_of_an_executing_confirmation_never_approves_again(h: Harness) -> None:
    cid = await hazard_question(h)
    await h.dm.on_say_finished(said("kitchen", "t3", f"{cid}:q1"))
    await h.dm.on_text(text("kitchen", "t3", "yes"))
    fresh = make_harness()
    fresh.dm._deps.services.confirmations = h.confirmations
    fresh.dm._deps.sessions = h.rows
    assert await fresh.dm.recover(await h.rows.open_sessions(), {"kitchen"}) == []
    await fresh.dm.on_text(text("kitchen", "t3", "yes"))
    await fresh.dm.on_confirmation(h.confirmations.finish(cid, "done"))
    assert fresh.last(T.SAY)["text"] == "The front door is unlocked."
    assert [c for c in h.confirmations.calls if c[0] == "approve"] == [("approve", cid)]
    await fresh.dm.close()
