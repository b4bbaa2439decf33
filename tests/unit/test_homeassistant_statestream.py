"""The statestream consumer: HA entity states and attributes folded into a bounded, read-only map."""

from __future__ import annotations

from handlers.homeassistant.statestream import HaEntities, split_topic


def test_split_topic() -> None:
    assert split_topic("ha_state", "ha_state/lock/front_door/state") == ("lock", "front_door", "state")
    assert split_topic("ha_state/", "ha_state/light/k/brightness") == ("light", "k", "brightness")
    assert split_topic("ha_state", "ha_state/lock/front_door") is None
    assert split_topic("ha_state", "other/lock/front_door/state") is None
    assert split_topic("ha_state", "ha_state/a/b/c/d") is None


def test_state_attributes_and_timestamps() -> None:
    ents = HaEntities()
    ents.apply("light", "kitchen", "state", b"on")
    ents.apply("light", "kitchen", "brightness", b"128")
    ents.apply("light", "kitchen", "friendly_name", b'"Kitchen"')
    ents.apply("light", "kitchen", "last_changed", b'"2025-01-01T00:00:00+00:00"')
    e = ents.get("light.kitchen")
    assert e is not None
    assert e.state == "on" and e.domain == "light"
    assert e.attributes == {"brightness": 128, "friendly_name": "Kitchen"}
    assert e.last_changed == "2025-01-01T00:00:00+00:00"
    before = e
    ents.apply("light", "kitchen", "state", b"off")
    assert before.state == "on"  # snapshots do not change under the caller
    assert ents.get("light.kitchen").state == "off"  # type: ignore[union-attr]
    assert [x.entity_id for x in ents.domain("light")] == ["light.kitchen"]


def test_attribute_before_state_and_forgetting() -> None:
    ents = HaEntities()
    ents.apply("sensor", "t", "unit_of_measurement", b'"C"')
    assert ents.get("sensor.t").state is None  # type: ignore[union-attr]
    ents.apply("sensor", "t", "unit_of_measurement", b"")
    assert ents.get("sensor.t").attributes == {}  # type: ignore[union-attr]
    ents.apply("sensor", "t", "state", b"")
    assert ents.get("sensor.t") is None


def test_bounded() -> None:
    ents = HaEntities(max_entities=2)
    for i in range(5):
        ents.apply("sensor", f"s{i}", "state", b"1")
    assert len(ents) == 2 and ents.dropped == 3
    ents.apply("sensor", "s0", "state", b"2")  # known entities still update
    assert ents.get("sensor.s0").state == "2"  # type: ignore[union-attr]
