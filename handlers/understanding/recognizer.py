"""Template recognition with hassil: Home Assistant's English sentences (home-assistant-intents) for the
intents KITT acts on, plus KITT's own sentences (``sentences/en.yaml``), with device and area names taken
from the registry. Compiled once at start; recognising is pure CPU (about a millisecond per sentence).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from hassil import Intents, TextSlotList, TextSlotValue, recognize_best
from hassil.expression import TextChunk
from home_assistant_intents import get_intents

from devices.capabilities import KIND_DOMAIN
from devices.registry import Registry

SENTENCES_DIR = Path(__file__).parent / "sentences"

# The Home Assistant intents KITT can act on or answer; the rest (timers, media, lists …) go elsewhere.
HA_INTENTS = (
    "HassTurnOn", "HassTurnOff", "HassLightSet", "HassClimateSetTemperature", "HassClimateGetTemperature",
    "HassGetState", "HassSetPosition",
)


@dataclass(frozen=True)
class TemplateMatch:
    intent: str
    slots: dict[str, Any]
    wildcards: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    area_from_context: bool = False  # slots["area"] is the speaker's area, not a word of the sentence

    def in_area(self, area: str) -> TemplateMatch:
        """The same match heard in another area (only a context-filled area slot differs)."""
        if not self.area_from_context or self.slots.get("area") == area:
            return self
        return replace(self, slots={**self.slots, "area": area})


# Memo key for "some area": the sentences condition on the area context only by its presence
# (``requires_context: area: {slot: true}``), so a sentence recognized in one area is recognized the same way
# in every other, up to the area slot that context filled in.
_ANY_AREA = "\x00any-area"


def load_sentences(language: str, *, own: bool = True) -> dict[str, Any]:
    """Home Assistant's sentences for ``language`` (subset), merged with KITT's own unless ``own`` is False."""
    ha = get_intents(language)
    if ha is None:
        raise ValueError(f"home-assistant-intents has no sentences for {language!r}")
    merged: dict[str, Any] = {
        "language": language,
        "intents": {k: {"data": list(ha["intents"][k]["data"])} for k in HA_INTENTS if k in ha["intents"]},
        "lists": dict(ha.get("lists", {})),
        "expansion_rules": dict(ha.get("expansion_rules", {})),
        "skip_words": list(ha.get("skip_words", [])),
    }
    own_file = SENTENCES_DIR / f"{language}.yaml"
    if own and own_file.is_file():
        own = yaml.safe_load(own_file.read_text(encoding="utf-8")) or {}
        for name, intent in (own.get("intents") or {}).items():
            merged["intents"].setdefault(name, {"data": []})["data"].extend(intent.get("data", []))
        merged["lists"].update(own.get("lists") or {})
        merged["expansion_rules"].update(own.get("expansion_rules") or {})
        merged["skip_words"].extend(w for w in own.get("skip_words") or [] if w not in merged["skip_words"])
    return merged


def slot_lists(registry: Registry, extra_areas: tuple[str, ...] = ()) -> dict[str, TextSlotList]:
    names = [
        TextSlotValue(TextChunk(spoken), d.name, {"domain": KIND_DOMAIN[d.kind]})
        for d in registry for spoken in d.spoken_names()
    ]
    areas = sorted(set(registry.areas()) | {a.strip().lower() for a in extra_areas if a.strip()})
    return {
        "name": TextSlotList(name="name", values=names),
        "area": TextSlotList.from_strings(areas, name="area"),
        "floor": TextSlotList(name="floor", values=[]),
    }


def _area_by_presence_only(intents: Intents) -> bool:
    """True if no sentence asks for (or excludes) a particular area, only for an area being known."""
    for intent in intents.intents.values():
        for data in intent.data:
            for context in (data.requires_context, data.excludes_context):
                if context and "area" in context and context["area"] != {"slot": True}:
                    return False
    return True


class TemplateRecognizer:
    def __init__(self, registry: Registry, *, language: str = "en", extra_areas: tuple[str, ...] = (),
                 own_sentences: bool = True, memo_size: int = 1024) -> None:
        self._registry = registry
        self._own = own_sentences
        self._language = language
        self._extra_areas = extra_areas
        self._intents: Intents | None = None
        self._slots: dict[str, TextSlotList] = {}
        self._filtered: dict[tuple[str, ...], Intents] = {}
        # Spoken commands in a house repeat a lot; hassil costs 2-3 ms a sentence, a hit costs nothing.
        self._memo: OrderedDict[tuple[str, str | None, tuple[str, ...] | None], TemplateMatch | None] = OrderedDict()
        self._memo_size = memo_size
        self._area_shared = False

    def compile(self) -> None:
        self._intents = Intents.from_dict(load_sentences(self._language, own=self._own))
        self._slots = slot_lists(self._registry, self._extra_areas)
        self._area_shared = _area_by_presence_only(self._intents)
        # The first recognition compiles hassil's regex filters; do it now, not on someone's request.
        self.recognize("turn on the light")

    @property
    def intent_names(self) -> list[str]:
        return sorted(self._intents.intents) if self._intents else []

    def _subset(self, intent_filter: tuple[str, ...] | None) -> Intents:
        assert self._intents is not None, "compile() first"
        if not intent_filter:
            return self._intents
        key = tuple(sorted(intent_filter))
        if key not in self._filtered:
            base = self._intents
            self._filtered[key] = Intents(
                language=base.language, intents={k: v for k, v in base.intents.items() if k in key},
                slot_lists=base.slot_lists, expansion_rules=base.expansion_rules, skip_words=base.skip_words,
                settings=base.settings)
        return self._filtered[key]

    def recognize(self, text: str, *, area: str | None = None,
                  intent_filter: tuple[str, ...] | None = None) -> TemplateMatch | None:
        # One entry for all areas: a command first heard in the kitchen costs nothing in the bedroom.
        area_key = (_ANY_AREA if self._area_shared else area) if area else None
        key = (" ".join(text.lower().split()), area_key, intent_filter)
        if key in self._memo:
            self._memo.move_to_end(key)
            found = self._memo[key]
        else:
            found = self._recognize(text, area=area, intent_filter=intent_filter)
            self._memo[key] = found
            if len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
        return found.in_area(area) if found is not None and area else found

    def _recognize(self, text: str, *, area: str | None,
                   intent_filter: tuple[str, ...] | None) -> TemplateMatch | None:
        context = {"area": area} if area else None
        result = recognize_best(text, self._subset(intent_filter), slot_lists=self._slots, intent_context=context,
                                language=self._language, best_slot_name="name")
        if result is None:
            return None
        slots = {k: e.value for k, e in result.entities.items()}
        wildcards = sum(1 for e in result.entities_list if e.is_wildcard)
        spoken_area = result.entities.get("area")
        # hassil fills a slot the sentence lacks from the context with no spoken text.
        from_context = spoken_area is not None and not spoken_area.text and spoken_area.value == area
        return TemplateMatch(intent=result.intent.name, slots=slots, wildcards=wildcards,
                             metadata=dict(result.intent_metadata or {}), area_from_context=from_context)
