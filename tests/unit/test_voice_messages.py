"""Hermes payload models: lenient input (Snips and Rhasspy variants), camelCase output."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from handlers.voice.messages import (
    ContinueSession,
    HotwordDetected,
    StartSession,
    TextCaptured,
    intent_payload,
    safe_intent_name,
)
from handlers.voice.replies import spoken_pin
from handlers.voice.topics import wakeword_of


def test_site_defaults_and_unknown_fields_are_ignored() -> None:
    msg = HotwordDetected.model_validate_json(b'{"modelId": "porcupine", "detectionSignalMs": 12, "x": {}}')
    assert msg.site_id == "default" and msg.session_id is None


def test_both_token_spellings_are_read() -> None:
    rhasspy = TextCaptured.model_validate({"text": "yes", "asrTokens": [[{"value": "yes", "confidence": 0.9,
                                                                          "rangeStart": 0, "rangeEnd": 3}]]})
    snips = TextCaptured.model_validate({"text": "yes", "tokens": [{"value": "yes", "confidence": 0.8}]})
    assert rhasspy.flat_tokens() == [{"value": "yes", "confidence": 0.9, "rangeStart": 0, "rangeEnd": 3}]
    assert snips.flat_tokens() == [{"value": "yes", "confidence": 0.8}]


def test_custom_data_stays_a_string_even_when_sent_as_an_object() -> None:
    msg = ContinueSession.model_validate({"sessionId": "s", "customData": {"a": 1}})
    assert msg.custom_data == '{"a":1}'
    assert ContinueSession.model_validate({"sessionId": "s", "customData": "x"}).custom_data == "x"


def test_a_site_id_that_cannot_be_a_topic_level_is_refused() -> None:
    with pytest.raises(ValidationError):
        TextCaptured.model_validate({"text": "x", "siteId": "kitchen/#"})


def test_start_session_init_defaults() -> None:
    msg = StartSession.model_validate({"siteId": "kitchen", "init": {"type": "notification", "text": "hi"}})
    assert msg.init.type == "notification" and msg.init.can_be_enqueued is True


def test_intent_payload_has_slot_fields_home_assistant_requires() -> None:
    body = intent_payload(text="turn on the kitchen light", intent="HassTurnOn", confidence=1, site="kitchen",
                          session_id="t1", custom_data=None, slots={"name": "kitchen light"}, tokens=None,
                          asr_confidence=0.9)
    slot = body["slots"][0]
    assert slot["slotName"] == "name" and slot["value"]["kind"] == "Unknown" and slot["range"]["start"] == 12
    assert body["intent"] == {"intentName": "HassTurnOn", "confidenceScore": 1.0}
    assert "customData" not in body


def test_intent_names_that_would_break_the_topic_are_refused() -> None:
    assert safe_intent_name("user:Lights") == "user:Lights"
    assert safe_intent_name("a/b") is None and safe_intent_name("#") is None


def test_spoken_pins_and_wakeword_ids() -> None:
    assert spoken_pin("one two three four") == "1234"
    assert spoken_pin("it is 9 8 7 6") == "9876"
    assert spoken_pin("banana") is None
    assert wakeword_of("hermes/hotword/porcupine/detected") == "porcupine"
