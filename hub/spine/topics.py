"""The one place that knows MQTT topic names and filter matching."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from hub.errors import SpineError


@dataclass(frozen=True)
class HubTopics:
    """Topic names of one hub (``kitt/<hub_id>/…``), per INTERFACES.md."""

    hub_id: str

    @property
    def base(self) -> str:
        return f"kitt/{self.hub_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def ask(self) -> str:
        return f"{self.base}/ask"

    @property
    def error(self) -> str:
        return f"{self.base}/error"

    def reply(self, site: str) -> str:
        return f"{self.base}/reply/{site}"

    def confirm(self, confirmation_id: str) -> str:
        return f"{self.base}/confirm/{confirmation_id}"

    @property
    def confirm_filter(self) -> str:
        return f"{self.base}/confirm/+"

    @property
    def cache_invalidate(self) -> str:
        return f"{self.base}/cache/invalidate"


def strip_share(topic_filter: str) -> str:
    """``$share/<group>/a/b`` → ``a/b`` (the part that matches topics)."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    return topic_filter


def validate_filter(topic_filter: str) -> None:
    if not topic_filter:
        raise SpineError("empty topic filter")
    levels = strip_share(topic_filter).split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise SpineError(f"'#' must be a whole last level: {topic_filter!r}")
        if "+" in level and level != "+":
            raise SpineError(f"'+' must be a whole level: {topic_filter!r}")


def validate_publish_topic(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise SpineError(f"not a publishable topic: {topic!r}")
    if len(topic.encode()) > 65535:
        raise SpineError("topic too long")


@lru_cache(maxsize=4096)
def _split(s: str) -> tuple[str, ...]:
    return tuple(s.split("/"))


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching, including the rule that wildcards at the start never match ``$`` topics."""
    f = _split(strip_share(topic_filter))
    t = _split(topic)
    if t and t[0].startswith("$") and f and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)
