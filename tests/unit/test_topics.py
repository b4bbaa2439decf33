"""Topic names and MQTT filter matching (hub.spine.topics)."""

from __future__ import annotations

import pytest

from hub.errors import SpineError
from hub.spine.topics import HubTopics, matches, strip_share, validate_filter, validate_publish_topic


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a//c", True),  # an empty level is a level
        ("+/+", "/x", True),
        ("a/#", "a", True),  # '#' also matches the parent level
        ("a/#", "a/b/c/d", True),
        ("a/#", "ab/c", False),
        ("#", "a/b", True),
        ("+", "a", True),
        ("+", "a/b", False),
        ("kitt/+/ask", "kitt/h1/ask", True),
        ("kitt/+/ask", "kitt/h1/ask/x", False),
        ("a/b/c", "a/b", False),
    ],
)
def test_filter_matching(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


@pytest.mark.parametrize(("topic_filter", "topic"),
                         [("#", "$SYS/broker/uptime"), ("+/broker/uptime", "$SYS/broker/x"), ("+/#", "$share/g/x")])
def test_leading_wildcards_never_match_dollar_topics(topic_filter: str, topic: str) -> None:
    assert not matches(topic_filter, topic)


def test_dollar_topics_match_an_explicit_first_level() -> None:
    assert matches("$SYS/#", "$SYS/broker/uptime")
    assert matches("$SYS/+/uptime", "$SYS/broker/uptime")


def test_share_prefix_is_stripped_for_matching() -> None:
    assert strip_share("$share/group/kitt/h/ask") == "kitt/h/ask"
    assert strip_share("$share/group/a/#") == "a/#"
    assert strip_share("kitt/h/ask") == "kitt/h/ask"
    assert matches("$share/g/kitt/+/ask", "kitt/h/ask")
    assert not matches("$share/g/kitt/+/ask", "$share/g/kitt/h/ask")


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/b#", "a/+b", "a+/b", "$share/g/a/#/b"])
def test_invalid_filters_are_refused(bad: str) -> None:
    with pytest.raises(SpineError):
        validate_filter(bad)


@pytest.mark.parametrize("good", ["#", "+", "a/+/b/#", "$share/g/a/+", "$SYS/#"])
def test_valid_filters(good: str) -> None:
    validate_filter(good)


@pytest.mark.parametrize("bad", ["", "a/+", "a/#", "a\x00b"])
def test_wildcards_are_refused_on_publish(bad: str) -> None:
    with pytest.raises(SpineError):
        validate_publish_topic(bad)


def test_hub_topic_names_follow_the_interface() -> None:
    t = HubTopics("h1")
    assert (t.status, t.ask, t.error) == ("kitt/h1/status", "kitt/h1/ask", "kitt/h1/error")
    assert t.reply("kitchen") == "kitt/h1/reply/kitchen"
    assert t.confirm_filter == "kitt/h1/confirm/+" and matches(t.confirm_filter, t.confirm("c-1"))
    assert t.cache_invalidate == "kitt/h1/cache/invalidate"
