"""Templates, resolution and the fallback's guards on the demo devices."""

from __future__ import annotations

import numpy as np
import pytest
from hassil import Intents

from devices.registry import Registry
from handlers.understanding.fallback import ExemplarMatcher
from handlers.understanding.pipeline import Pipeline
from handlers.understanding.recognizer import TemplateMatch, TemplateRecognizer, _area_by_presence_only
from hub.config import DeviceSection
from hub.contracts import DeviceAction
from tests.support.config import demo_devices


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_config({k: DeviceSection.model_validate(v) for k, v in demo_devices().items()})


@pytest.fixture(scope="module")
def pipeline(registry: Registry) -> Pipeline:
    recognizer = TemplateRecognizer(registry, extra_areas=("kitchen", "bedroom"))
    recognizer.compile()
    return Pipeline(registry, recognizer, ExemplarMatcher(registry))


async def _none(text: str) -> None:
    return None


async def test_turn_on_resolves_to_one_device_action(pipeline: Pipeline) -> None:
    u = await pipeline.understand("turn on the kitchen light", area=None, vector=_none)
    assert (u.intent, u.actions, u.source) == ("HassTurnOn", (DeviceAction("kitchen_light", "turn_on"),), "template")


async def test_lock_and_unlock_map_to_lock_verbs(pipeline: Pipeline) -> None:
    u = await pipeline.understand("unlock the front door", area=None, vector=_none)
    assert u.actions == (DeviceAction("front_door", "unlock"),)


async def test_here_means_the_site_area(pipeline: Pipeline) -> None:
    u = await pipeline.understand("turn off the lights", area="kitchen", vector=_none)
    assert u.actions == (DeviceAction("kitchen_light", "turn_off"),)


async def test_no_device_in_the_area_is_a_problem_not_an_action(pipeline: Pipeline) -> None:
    u = await pipeline.understand("turn on the lights in the bedroom", area=None, vector=_none)
    assert u.intent == "HassTurnOn" and u.actions == () and "bedroom" in u.slots["problem"]


async def test_intent_filter_limits_to_confirmation_answers(pipeline: Pipeline) -> None:
    u = await pipeline.understand("turn on the kitchen light", area=None, vector=_none,
                                  intent_filter=("ConfirmYes", "ConfirmNo"))
    assert u.intent == "Unknown"
    u = await pipeline.understand("yes please", area=None, vector=_none, intent_filter=("ConfirmYes", "ConfirmNo"))
    assert u.intent == "ConfirmYes"


def _matcher_with(registry: Registry, target: str) -> tuple[ExemplarMatcher, np.ndarray]:
    """A matcher whose exemplar vectors make ``target`` the nearest text (unit vectors on distinct axes)."""
    matcher = ExemplarMatcher(registry)
    dim = len(matcher.texts) + 1
    vectors = [np.eye(dim, dtype=np.float32)[i] for i in range(len(matcher.texts))]
    matcher.load(vectors)
    return matcher, vectors[matcher.texts.index(target)]


def test_fallback_acts_only_on_a_named_device_without_negation(registry: Registry) -> None:
    matcher, vec = _matcher_with(registry, "turn on the kitchen light")
    match = matcher.match("get the kitchen light going", vec)
    assert match is not None and (match.intent, match.device.name) == ("HassTurnOn", "kitchen_light")
    assert matcher.match("don't get the kitchen light going", vec) is None
    assert matcher.match("get the thing going", vec) is None           # no device named
    assert matcher.match("remind me to get the kitchen light going", vec) is None
    assert matcher.match("get the kitchen light off", vec) is None     # opposite word


def test_fallback_needs_a_clear_margin(registry: Registry) -> None:
    matcher = ExemplarMatcher(registry)
    texts = matcher.texts
    dim = 8
    on, off = texts.index("turn on the kitchen light"), texts.index("turn off the kitchen light")
    vectors = [np.zeros(dim, np.float32) for _ in texts]
    vectors[on] = np.array([1, 0, 0, 0, 0, 0, 0, 0], np.float32)
    vectors[off] = np.array([0.99, 0.141, 0, 0, 0, 0, 0, 0], np.float32)
    matcher.load(vectors)
    assert matcher.match("kitchen light please", np.array([1, 0, 0, 0, 0, 0, 0, 0], np.float32)) is None


def test_a_sentence_heard_in_one_area_is_recognized_in_another_without_hassil(registry: Registry) -> None:
    recognizer = TemplateRecognizer(registry, extra_areas=("kitchen", "bedroom"))
    recognizer.compile()
    fresh = {area: recognizer._recognize("turn on the light", area=area, intent_filter=None)
             for area in ("kitchen", "bedroom")}
    calls: list[str | None] = []
    real = recognizer._recognize

    def counting(text: str, *, area: str | None, intent_filter: tuple[str, ...] | None) -> TemplateMatch | None:
        calls.append(area)
        return real(text, area=area, intent_filter=intent_filter)

    recognizer._recognize = counting  # type: ignore[method-assign]
    in_kitchen = recognizer.recognize("turn on the light", area="kitchen")
    in_bedroom = recognizer.recognize("Turn on  the light", area="bedroom")
    assert calls == ["kitchen"]
    # The area the context filled in is the speaker's, as hassil itself gives it for each area.
    assert (in_kitchen, in_bedroom) == (fresh["kitchen"], fresh["bedroom"])
    assert in_bedroom is not None and in_bedroom.slots["area"] == "bedroom"
    # A spoken name keeps its own slots; with no area at all the sentence is recognized on its own.
    named = recognizer.recognize("turn on the kitchen light", area="bedroom")
    assert named is not None and "area" not in named.slots
    assert recognizer.recognize("turn on the lights", area=None) is None
    assert calls == ["kitchen", "bedroom", None]


def test_a_sentence_for_one_particular_area_keeps_the_memo_per_area() -> None:
    def intents(area_context: dict[str, object]) -> Intents:
        return Intents.from_dict({"language": "en", "intents": {"HassTurnOn": {"data": [
            {"sentences": ["turn on the light"], "requires_context": {"area": area_context}}]}}})

    assert _area_by_presence_only(intents({"slot": True}))
    assert not _area_by_presence_only(intents({"value": "kitchen"}))
