"""The route table, payload validation, application ids and per-key locks (hub.spine.router)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel, Field

from hub.errors import InputRejected, SpineError
from hub.spine.router import Inbound, KeyedLocks, Route, RouteTable, message_id, parse_payload


async def _noop(_: Inbound) -> None:
    return None


class Cmd(BaseModel):
    id: str = Field(min_length=1)
    n: int = Field(ge=0)


def test_lookup_exact_and_wildcards_and_cache_invalidation() -> None:
    table = RouteTable()
    exact = Route(filter="kitt/h/ask", handler=_noop, name="exact")
    plus = Route(filter="kitt/+/ask", handler=_noop, name="plus")
    hash_ = Route(filter="kitt/#", handler=_noop, name="hash")
    shared = Route(filter="$share/g/dev/+/state", handler=_noop, name="shared")
    for r in (exact, plus, hash_, shared):
        table.add(r)
    assert {r.name for r in table.lookup("kitt/h/ask")} == {"exact", "plus", "hash"}
    assert {r.name for r in table.lookup("kitt/h/reply/x")} == {"hash"}
    assert [r.name for r in table.lookup("dev/lamp/state")] == ["shared"]
    assert table.lookup("other") == ()
    table.remove(hash_)  # the cached answer must not survive a change of routes
    assert {r.name for r in table.lookup("kitt/h/ask")} == {"exact", "plus"}
    table.remove(exact)
    assert [r.name for r in table.lookup("kitt/h/ask")] == ["plus"]


def test_lookup_never_routes_dollar_topics_to_leading_wildcards() -> None:
    table = RouteTable()
    table.add(Route(filter="#", handler=_noop, name="all"))
    table.add(Route(filter="$SYS/#", handler=_noop, name="sys"))
    assert [r.name for r in table.lookup("$SYS/broker/load")] == ["sys"]
    assert [r.name for r in table.lookup("a/b")] == ["all"]


def test_topic_cache_is_bounded() -> None:
    table = RouteTable(cache_size=8)
    table.add(Route(filter="t/+", handler=_noop, name="t"))
    for i in range(100):
        assert table.lookup(f"t/{i}")
    assert len(table._cache) <= 8


def test_subscription_filter_uses_the_shared_group_only_when_shared() -> None:
    r = Route(filter="kitt/h/ask", handler=_noop, name="ask", shared=True)
    assert r.subscription_filter("") == "kitt/h/ask"
    assert r.subscription_filter("hubs") == "$share/hubs/kitt/h/ask"
    assert Route(filter="a/b", handler=_noop, name="x").subscription_filter("hubs") == "a/b"


def test_route_refuses_bad_filters_and_qos() -> None:
    with pytest.raises(SpineError):
        Route(filter="a/#/b", handler=_noop, name="x")
    with pytest.raises(ValueError, match="qos"):
        Route(filter="a", handler=_noop, name="x", qos=3)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "invalid_json"),
        (b"{", "invalid_json"),
        (b"[" * 50_000, "invalid_json"),
        (b'{"id": "a", "n": -1}', "invalid_payload"),
        (b'{"id": "", "n": 1}', "invalid_payload"),
        (b'{"n": 1}', "invalid_payload"),
        (b"null", "invalid_payload"),
        (b"\xff\xfe\x00", "invalid_json"),
    ],
)
def test_rejection_reasons(payload: bytes, reason: str) -> None:
    route = Route(filter="a", handler=_noop, name="x", model=Cmd)
    with pytest.raises(InputRejected) as info:
        parse_payload(route, payload)
    assert info.value.reason == reason
    assert info.value.detail  # says what was wrong


def test_valid_payload_is_parsed_and_raw_routes_get_bytes() -> None:
    assert parse_payload(Route(filter="a", handler=_noop, name="x", model=Cmd), b'{"id":"a","n":2}') == Cmd(id="a", n=2)
    assert parse_payload(Route(filter="a", handler=_noop, name="x"), b"\x00raw") == b"\x00raw"


@pytest.mark.parametrize(
    ("payload", "props", "expected"),
    [
        (b"{}", {"user_property": [("id", "u-1")]}, "u-1"),
        (b'{"id": "p-1"}', {"user_property": [("id", "u-1")]}, "u-1"),  # the user property wins
        (b'{"id": "p-1"}', {}, "p-1"),
        (b'{"id": 42}', {}, "42"),
        (b'{"id": true}', {}, None),
        (b'{"id": {"a": 1}}', {}, None),
        (b'{"id": ' + b"9" * 5000 + b"}", {}, None),  # above Python's int digits limit
        (b'{"id": ' + b'{"a":' * 5000 + b"1" + b"}" * 5001, {}, None),  # nested too deeply
        (b"[1]", {}, None),
        (b"\xff", {}, None),
    ],
)
def test_message_id_never_raises(payload: bytes, props: dict[str, object], expected: str | None) -> None:
    assert message_id(payload, props) == expected


def test_inbound_properties_accessors() -> None:
    msg = Inbound(topic="t", payload=b"{}", qos=2, retain=False,
                  properties={"user_property": [("id", "1"), ("k", "v")], "response_topic": ["r/t"],
                              "correlation_data": [b"\x01"]})
    assert msg.user_properties == {"id": "1", "k": "v"}
    assert msg.response_topic == "r/t"
    assert msg.correlation_data == b"\x01"


async def test_keyed_locks_serialise_one_key_and_free_memory() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    gate = asyncio.Event()

    async def worker(key: str, name: str) -> None:
        async with await locks(key):
            order.append(f"{name}+")
            if name == "a1":
                await gate.wait()
            order.append(f"{name}-")

    tasks = [asyncio.create_task(worker("a", "a1")), asyncio.create_task(worker("a", "a2")),
             asyncio.create_task(worker("b", "b1"))]
    await asyncio.sleep(0.01)
    # b1 ran while a1 held key "a"; a2 waits behind a1.
    assert order == ["a1+", "b1+", "b1-"]
    gate.set()
    await asyncio.gather(*tasks)
    assert order[3:] == ["a1-", "a2+", "a2-"]
    assert len(locks) == 0
