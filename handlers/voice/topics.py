"""Hermes topic names (global ``hermes/…``, per the Snips/Rhasspy protocol, not under ``kitt/<hub_id>``)."""

from __future__ import annotations

HOTWORD_DETECTED = "hermes/hotword/+/detected"
TEXT_CAPTURED = "hermes/asr/textCaptured"
START_SESSION = "hermes/dialogueManager/startSession"
CONTINUE_SESSION = "hermes/dialogueManager/continueSession"
END_SESSION = "hermes/dialogueManager/endSession"
CONFIGURE = "hermes/dialogueManager/configure"
SAY_FINISHED = "hermes/tts/sayFinished"
NLU_QUERY = "hermes/nlu/query"

SESSION_STARTED = "hermes/dialogueManager/sessionStarted"
SESSION_QUEUED = "hermes/dialogueManager/sessionQueued"
SESSION_ENDED = "hermes/dialogueManager/sessionEnded"
DM_INTENT_NOT_RECOGNIZED = "hermes/dialogueManager/intentNotRecognized"
HOTWORD_ON = "hermes/hotword/toggleOn"
HOTWORD_OFF = "hermes/hotword/toggleOff"
START_LISTENING = "hermes/asr/startListening"
STOP_LISTENING = "hermes/asr/stopListening"
INTENT_PARSED = "hermes/nlu/intentParsed"
NLU_NOT_RECOGNIZED = "hermes/nlu/intentNotRecognized"
SAY = "hermes/tts/say"
ERROR = "hermes/error/dialogueManager"


def intent(name: str) -> str:
    return f"hermes/intent/{name}"


def wakeword_of(topic: str) -> str:
    """``hermes/hotword/<wakewordId>/detected`` → the wakeword id."""
    parts = topic.split("/")
    return parts[2] if len(parts) == 4 else "default"
