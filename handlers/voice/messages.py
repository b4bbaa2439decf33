"""Hermes payload models (Snips / Rhasspy 2.5), lenient in what they accept.

What satellites send is not ours to police: unknown fields are ignored, ``siteId`` defaults to "default",
both ``tokens`` (Snips) and ``asrTokens`` (Rhasspy) are read, and ``customData`` stays an opaque string
(an object sent by mistake is kept as its JSON text rather than dropped, see snips-issues#121).
Outbound payloads are built by the small functions at the end, so every key is camelCase in one place.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

# A siteId becomes a topic level for some services: keep it to a safe alphabet and length.
SITE_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


def _opaque(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


class HermesIn(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    site_id: str = Field(default="default", alias="siteId", pattern=SITE_PATTERN)
    session_id: str | None = Field(default=None, alias="sessionId", max_length=200)


class HotwordDetected(HermesIn):
    model_id: str = Field(default="", alias="modelId", max_length=200)
    custom_data: str | None = Field(default=None, alias="customData")
    lang: str | None = None

    _opaque = field_validator("custom_data", mode="before")(_opaque)


class AsrToken(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    value: str = ""
    confidence: float = 1.0
    range_start: int | None = Field(default=None, alias="rangeStart")
    range_end: int | None = Field(default=None, alias="rangeEnd")


class TextCaptured(HermesIn):
    text: str = Field(default="", max_length=2000)
    likelihood: float = 1.0
    seconds: float = 0.0
    wakeword_id: str | None = Field(default=None, alias="wakewordId")
    lang: str | None = None
    # Rhasspy sends a list of lists; Snips a flat list. Either is accepted and flattened.
    tokens: list[Any] | None = Field(default=None, validation_alias=AliasChoices("asrTokens", "tokens"))

    def flat_tokens(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for item in self.tokens or []:
            for tok in item if isinstance(item, list) else [item]:
                if isinstance(tok, dict):
                    out.append(AsrToken.model_validate(tok).model_dump(by_alias=True, exclude_none=True))
        return out


class SessionInit(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: str = "action"
    text: str | None = None
    can_be_enqueued: bool = Field(default=True, alias="canBeEnqueued")
    intent_filter: list[str] | None = Field(default=None, alias="intentFilter")
    send_intent_not_recognized: bool = Field(default=False, alias="sendIntentNotRecognized")


class StartSession(HermesIn):
    init: SessionInit = Field(default_factory=SessionInit)
    custom_data: str | None = Field(default=None, alias="customData")
    lang: str | None = None

    _opaque = field_validator("custom_data", mode="before")(_opaque)


class ContinueSession(BaseModel):
    """continue/end carry no siteId in Hermes; when a sender adds one anyway it must match the session."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    session_id: str = Field(alias="sessionId", min_length=1, max_length=200)
    site_id: str | None = Field(default=None, alias="siteId")
    text: str | None = None
    intent_filter: list[str] | None = Field(default=None, alias="intentFilter")
    custom_data: str | None = Field(default=None, alias="customData")
    send_intent_not_recognized: bool = Field(default=False, alias="sendIntentNotRecognized")
    lang: str | None = None

    _opaque = field_validator("custom_data", mode="before")(_opaque)


class EndSession(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    session_id: str = Field(alias="sessionId", min_length=1, max_length=200)
    site_id: str | None = Field(default=None, alias="siteId")
    text: str | None = None
    custom_data: str | None = Field(default=None, alias="customData")

    _opaque = field_validator("custom_data", mode="before")(_opaque)


class SayFinished(HermesIn):
    id: str | None = None


class NluQuery(HermesIn):
    input: str = Field(default="", max_length=2000)
    id: str | None = None
    intent_filter: list[str] | None = Field(default=None, alias="intentFilter")
    custom_data: str | None = Field(default=None, alias="customData")

    _opaque = field_validator("custom_data", mode="before")(_opaque)


class ConfigureIntent(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    intent_id: str = Field(alias="intentId")
    enable: bool = True


class Configure(HermesIn):
    intents: list[ConfigureIntent] = Field(default_factory=list)


# --- outbound ------------------------------------------------------------------------------------------


def compact(**fields: Any) -> dict[str, Any]:
    """A payload without None values (Hermes readers treat a missing key as null)."""
    return {k: v for k, v in fields.items() if v is not None}


def intent_payload(*, text: str, intent: str, confidence: float, site: str, session_id: str | None,
                   custom_data: str | None, slots: dict[str, Any], tokens: list[dict[str, Any]] | None,
                   asr_confidence: float | None, query_id: str | None = None,
                   lang: str | None = None) -> dict[str, Any]:
    """nlu/intentParsed and hermes/intent/<name> share this shape (Rhasspy NluIntent)."""
    return compact(
        input=text, rawInput=text, id=query_id,
        intent={"intentName": intent, "confidenceScore": round(float(confidence), 4)},
        siteId=site, sessionId=session_id, customData=custom_data, slots=slots_payload(text, slots),
        asrTokens=[tokens] if tokens else None, asrConfidence=asr_confidence, lang=lang,
    )


def slots_payload(text: str, slots: dict[str, Any]) -> list[dict[str, Any]]:
    """Hermes slot objects; HA's snips integration requires ``slotName`` and ``value.kind``."""
    out = []
    lowered = text.lower()
    for name, value in slots.items():
        raw = str(value)
        start = lowered.find(raw.lower())
        out.append({
            "entity": name, "slotName": name, "rawValue": raw,
            "value": {"kind": "Unknown", "value": value}, "confidence": 1.0,
            "range": {"start": max(start, 0), "end": max(start, 0) + len(raw) if start >= 0 else 0},
        })
    return out


def safe_intent_name(name: str) -> str | None:
    """An intent name becomes a topic level: refuse '/', '+', '#' rather than publish a wrong topic."""
    if not name or any(c in name for c in "/+#\x00"):
        return None
    return name
