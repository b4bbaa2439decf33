"""Routes: what a handler declares (topic filter, payload model, limits), and the lookup from topic to routes.

Lookup is a dict for exact filters plus a list of wildcard filters, with a per-topic cache.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from hub.errors import InputRejected
from hub.spine.topics import matches, strip_share, validate_filter

Handler = Callable[["Inbound"], Awaitable[None]]
KeyFn = Callable[["Inbound"], str | None]


@dataclass(frozen=True)
class Route:
    """One subscription of one handler.

    durable: QoS 1/2 messages are committed to the inbox before they are acknowledged.
    shared: with ``mqtt.shared_group`` set, subscribed as ``$share/<group>/…`` so N hubs split the load.
    dedupe_key: an application id for the message (redeliveries with the same key have no second effect).
    ordering_key: messages with the same key are handled one at a time, in arrival order.
    accept_retained: False for command topics: a retained message that looks like a command never runs.
    grouped: how ``Spine.handling()`` blocks of this route commit. None (default): in shared group
      transactions once its blocks have proved short (see ``hub.spine.txgroup``), else one transaction each;
      True: always grouped; False: always one transaction per message (blocks that call the network).
    """

    filter: str
    handler: Handler
    name: str
    model: type[BaseModel] | None = None
    qos: int = 2
    durable: bool = True
    shared: bool = False
    concurrency: int = 32
    dedupe_key: KeyFn | None = None
    ordering_key: KeyFn | None = None
    accept_retained: bool = True
    report_errors: bool = True
    owner: str = "hub"
    grouped: bool | None = None

    def __post_init__(self) -> None:
        validate_filter(self.filter)
        if self.qos not in (0, 1, 2):
            raise ValueError("qos must be 0, 1 or 2")

    def subscription_filter(self, shared_group: str) -> str:
        if self.shared and shared_group:
            return f"$share/{shared_group}/{strip_share(self.filter)}"
        return self.filter


@dataclass
class Inbound:
    """One received message as a handler sees it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[str, Any]
    data: Any = None
    inbox_id: int | None = None
    dedupe_key: str | None = None
    redelivered: bool = False
    finished: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def user_properties(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for pair in self.properties.get("user_property", []) or []:
            if isinstance(pair, list | tuple) and len(pair) == 2:
                out[str(pair[0])] = str(pair[1])
        return out

    @property
    def response_topic(self) -> str | None:
        value = self.properties.get("response_topic")
        if isinstance(value, list):
            value = value[0] if value else None
        return value or None

    @property
    def correlation_data(self) -> bytes | None:
        value = self.properties.get("correlation_data")
        if isinstance(value, list):
            value = value[0] if value else None
        return value or None

    def json(self) -> Any:
        return json.loads(self.payload)


MAX_ID_LENGTH = 200


def message_id(payload: bytes, properties: dict[str, Any]) -> str | None:
    """The application id of a message: MQTT 5 user property ``id``, else a JSON payload's top-level ``id``.

    Never raises: this runs on hostile input before validation (deep nesting, bad UTF-8, huge numbers).
    """
    for pair in properties.get("user_property", []) or []:
        if isinstance(pair, list | tuple) and len(pair) == 2 and pair[0] == "id":
            return str(pair[1])[:MAX_ID_LENGTH] or None
    if payload[:1] != b"{":
        return None
    try:
        value = json.loads(payload).get("id")
    except (ValueError, RecursionError, AttributeError):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)[:MAX_ID_LENGTH] or None


def parse_payload(route: Route, payload: bytes) -> Any:
    """Validate against the route's model; raise ``InputRejected`` naming what was wrong."""
    if route.model is None:
        return payload
    try:
        return route.model.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "payload"
        kind = "invalid_json" if first["type"] == "json_invalid" else "invalid_payload"
        raise InputRejected(kind, f"{loc}: {first['msg']} ({exc.error_count()} problem(s))") from exc
    except UnicodeDecodeError as exc:
        raise InputRejected("invalid_encoding", "payload is not UTF-8") from exc
    except RecursionError as exc:
        raise InputRejected("invalid_json", "payload nested too deeply") from exc


class RouteTable:
    """Exact filters in a dict, wildcard filters in a list, and a bounded per-topic cache."""

    def __init__(self, cache_size: int = 4096) -> None:
        self._exact: dict[str, list[Route]] = {}
        self._wild: list[Route] = []
        self._cache: OrderedDict[str, tuple[Route, ...]] = OrderedDict()
        self._cache_size = cache_size

    def add(self, route: Route) -> None:
        plain = strip_share(route.filter)
        if "+" in plain or "#" in plain:
            self._wild.append(route)
        else:
            self._exact.setdefault(plain, []).append(route)
        self._cache.clear()

    def remove(self, route: Route) -> None:
        plain = strip_share(route.filter)
        if route in self._wild:
            self._wild.remove(route)
        elif route in self._exact.get(plain, []):
            self._exact[plain].remove(route)
            if not self._exact[plain]:
                del self._exact[plain]
        self._cache.clear()

    def routes(self) -> list[Route]:
        return [r for rs in self._exact.values() for r in rs] + list(self._wild)

    def lookup(self, topic: str) -> tuple[Route, ...]:
        hit = self._cache.get(topic)
        if hit is not None:
            self._cache.move_to_end(topic)
            return hit
        found = tuple(self._exact.get(topic, ())) + tuple(r for r in self._wild if matches(r.filter, topic))
        self._cache[topic] = found
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return found


class KeyedLocks:
    """One lock per ordering key, dropped when nobody holds or waits for it (bounded memory)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def __call__(self, key: str) -> _KeyedLockCtx:
        return _KeyedLockCtx(self, key)

    def _acquire_ref(self, key: str) -> asyncio.Lock:
        lock, refs = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, refs + 1)
        return lock

    def _release_ref(self, key: str) -> None:
        lock, refs = self._locks[key]
        if refs <= 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, refs - 1)

    def __len__(self) -> int:
        return len(self._locks)


class _KeyedLockCtx:
    def __init__(self, owner: KeyedLocks, key: str) -> None:
        self._owner = owner
        self._key = key
        self._lock: asyncio.Lock | None = None

    async def __aenter__(self) -> None:
        self._lock = self._owner._acquire_ref(self._key)
        try:
            await self._lock.acquire()
        except BaseException:
            self._owner._release_ref(self._key)
            raise

    async def __aexit__(self, *exc: object) -> None:
        assert self._lock is not None
        self._lock.release()
        self._owner._release_ref(self._key)
