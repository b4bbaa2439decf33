"""The embedding fallback: when no template matches, compare the request's vector with exemplar sentences
for the configured devices and accept the nearest only when it is clearly right.

Guards, because a wrong action is worse than "I can't do that yet": a device must be named in the text;
the best exemplar must clear ``threshold`` and beat the best exemplar of any other intent on that device
by ``margin``; negations, opposite words and reminders/questions/schedules are never acted on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from devices.registry import Device, Registry
from handlers.understanding.resolve import action_for

# kind → [(intent, exemplar templates)]; {n} is a spoken device name.
EXEMPLARS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "switchable": [
        ("HassTurnOn", ("turn on the {n}", "switch the {n} on", "i want the {n} on", "power up the {n}",
                        "get the {n} going", "the {n} should be on")),
        ("HassTurnOff", ("turn off the {n}", "switch the {n} off", "i want the {n} off", "shut down the {n}",
                         "the {n} should be off", "kill the {n}")),
        ("HassGetState", ("is the {n} on", "is the {n} off", "what is the state of the {n}",
                          "did i leave the {n} on", "check the {n}")),
    ],
    "lock": [
        ("HassTurnOn", ("lock the {n}", "secure the {n}", "make the {n} locked")),
        ("HassTurnOff", ("unlock the {n}", "unbolt the {n}", "let me in through the {n}")),
        ("HassGetState", ("is the {n} locked", "is the {n} unlocked", "what is the state of the {n}",
                          "did i lock the {n}")),
    ],
    "cover": [
        ("HassTurnOn", ("open the {n}", "raise the {n}", "lift the {n}")),
        ("HassTurnOff", ("close the {n}", "shut the {n}", "lower the {n}")),
        ("HassGetState", ("is the {n} open", "is the {n} closed", "what is the state of the {n}")),
    ],
    "alarm": [
        ("KittAlarmArm", ("arm the {n}", "turn the {n} on", "set the {n}")),
        ("KittAlarmDisarm", ("disarm the {n}", "turn the {n} off")),
        ("HassGetState", ("is the {n} armed", "what is the state of the {n}")),
    ],
    "climate": [
        ("HassClimateSetTemperature", ("set the {n} to 20 degrees", "make it warmer with the {n}",
                                       "change the {n} temperature")),
        ("HassClimateGetTemperature", ("what is the temperature on the {n}", "how warm is it according to the {n}")),
    ],
}
_GROUP = {"light": "switchable", "switch": "switchable", "appliance": "switchable", "lock": "lock",
          "cover": "cover", "valve": "cover", "alarm": "alarm", "climate": "climate"}

_NEGATION = re.compile(r"\b(don'?t|do not|never|not|no|stop)\b")
_DEFERRED = re.compile(r"\b(remind|reminder|timer|schedule|tomorrow|later|tonight|at \d|in \d+ (minute|hour)s?|"
                       r"why|who|when|how do|how much|cost|price|poem|story|joke)\b")
_OPPOSITES = {"HassTurnOn": re.compile(r"\b(off|out|unlock|close|shut|lower|disarm)\b"),
              "HassTurnOff": re.compile(r"\b(on|lock|open|raise|lift|arm)\b"),
              "KittAlarmArm": re.compile(r"\b(disarm|off)\b"),
              "KittAlarmDisarm": re.compile(r"\b(arm|on)\b")}
_NUMBER = re.compile(r"\b(\d+(?:\.\d+)?)\b")


@dataclass(frozen=True)
class FallbackMatch:
    intent: str
    device: Device
    confidence: float
    slots: dict[str, Any]


def _mentions(text: str, device: Device) -> bool:
    return any(re.search(rf"\b{re.escape(n)}\b", text) for n in device.spoken_names())


class ExemplarMatcher:
    def __init__(self, registry: Registry, *, threshold: float = 0.8, margin: float = 0.04) -> None:
        self._registry = registry
        self.threshold = threshold
        self.margin = margin
        self._rows: list[tuple[str, str, str]] = []  # (intent, device, text)
        self._matrix: np.ndarray | None = None
        for d in registry:
            for intent, templates in EXEMPLARS.get(_GROUP.get(d.kind, ""), []):
                for name in d.spoken_names()[:2]:
                    self._rows.extend((intent, d.name, t.format(n=name)) for t in templates)

    @property
    def texts(self) -> list[str]:
        return [t for _, _, t in self._rows]

    @property
    def ready(self) -> bool:
        return self._matrix is not None

    def load(self, vectors: list[np.ndarray]) -> None:
        self._matrix = np.vstack(vectors).astype(np.float32) if vectors else np.zeros((0, 384), np.float32)

    def match(self, text: str, vector: np.ndarray) -> FallbackMatch | None:
        if self._matrix is None or not len(self._rows):
            return None
        clean = re.sub(r"[^\w' .]", " ", text.lower())
        if _NEGATION.search(clean) or _DEFERRED.search(clean):
            return None
        named = {d.name for d in self._registry if _mentions(clean, d)}
        if not named:
            return None
        sims = self._matrix @ vector.astype(np.float32)
        best: dict[tuple[str, str], float] = {}
        for (intent, device, _), score in zip(self._rows, sims, strict=True):
            if device in named:
                best[(intent, device)] = max(best.get((intent, device), -1.0), float(score))
        if not best:
            return None
        (intent, device), score = max(best.items(), key=lambda kv: kv[1])
        rivals = [s for (i, d), s in best.items() if d == device and i != intent]
        if score < self.threshold or (rivals and score - max(rivals) < self.margin):
            return None
        if (opposite := _OPPOSITES.get(intent)) is not None and opposite.search(clean):
            return None
        slots: dict[str, Any] = {"name": device}
        if intent == "HassClimateSetTemperature":
            numbers = _NUMBER.findall(clean)
            if len(numbers) != 1:
                return None
            slots["temperature"] = float(numbers[0])
        dev = self._registry.get(device)
        assert dev is not None
        if intent not in ("HassGetState", "HassClimateGetTemperature") and action_for(intent, dev, slots) is None:
            return None
        return FallbackMatch(intent=intent, device=dev, confidence=round(score, 3), slots=slots)
