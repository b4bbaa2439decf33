"""The spine end to end in this process, on a private Mosquitto and the real PostgreSQL: request/response,
deduplication, rejections, handler failures, the outbox, recovery of rows left pending, grouped transactions.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hub.config import Config
from hub.spine import AlreadyHandled, Inbound, Route
from tests.support.config import make_config
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import SpineEnv, TestClient, running_spine

pytestmark = pytest.mark.integration


@pytest.fixture
def cfg(broker: Mosquitto, db_dsn: str, state_dir: Path) -> Config:
    return make_config(dsn=db_dsn, state_dir=state_dir, mqtt_port=broker.port)


async def _events(dsn: str, kind: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT correlation_id, body FROM events WHERE kind = $1 ORDER BY id", kind)
    finally:
        await conn.close()
    return [{"correlation_id": r["correlation_id"], "body": json.loads(r["body"])} for r in rows]


async def test_ask_answers_on_the_response_topic_with_correlation_data(broker: Mosquitto, cfg: Config) -> None:
    async with running_spine(cfg, plugins=("handlers.ask",)), TestClient(broker.port) as c:
        mine = await c.collect("test/replies/+")
        fallback = await c.collect(f"kitt/{cfg.hub.id}/reply/#")
        await c.publish(f"kitt/{cfg.hub.id}/ask", {"id": "r1", "text": "lights?", "site": "hall"},
                        response_topic="test/replies/one", correlation_data=b"\x00corr")
        await c.publish(f"kitt/{cfg.hub.id}/ask", {"id": "r2", "text": "hi", "site": "kitchen"})
        [reply] = await mine.wait_for(1, 10)
        assert reply.topic == "test/replies/one" and reply.correlation_data == b"\x00corr"
        assert reply.json()["id"] == "r1" and reply.qos == 2
        assert reply.user_properties["id"].startswith("reply:")  # the idempotency key travels with it
        [other] = await fallback.wait_for(1, 10)
        assert other.topic == f"kitt/{cfg.hub.id}/reply/kitchen" and other.json()["id"] == "r2"


async def test_a_repeated_request_has_one_effect(broker: Mosquitto, cfg: Config) -> None:
    async with running_spine(cfg, plugins=("handlers.ask",)) as env, TestClient(broker.port) as c:
        replies = await c.collect(f"kitt/{cfg.hub.id}/reply/#")
        body = {"id": "same", "text": "again", "site": "hall"}
        for _ in range(3):
            await c.publish(f"kitt/{cfg.hub.id}/ask", body)
        # The ask route dedupes by the payload's id (its dedupe_key), whatever the user property says.
        await c.publish(f"kitt/{cfg.hub.id}/ask", body, user_properties=[("id", "other")])
        await replies.wait_for(1, 10)
        await replies.settle(0.5)
        assert [m.json()["id"] for m in replies.messages] == ["same"]
        assert env.sample("kitt_messages_duplicate_total", topic_class="ask") == 3
    assert [e["correlation_id"] for e in await _events(cfg.database.url, "ask.answered")] == ["same"]


async def test_bad_input_is_rejected_on_the_error_topic(broker: Mosquitto, cfg: Config) -> None:
    async with running_spine(cfg, plugins=("handlers.ask",)) as env, TestClient(broker.port) as c:
        errors = await c.collect(f"kitt/{cfg.hub.id}/error")
        ask = f"kitt/{cfg.hub.id}/ask"
        await c.publish(ask, b"{not json")
        await c.publish(ask, {"id": "bad-1", "text": ""})
        await c.publish(ask, {"text": "no id"}, qos=1)
        got = await errors.wait_for(3, 10)
        bodies = [m.json() for m in got]
        assert all(set(b) == {"topic", "error", "id"} and b["topic"] == ask for b in bodies)
        assert sorted(b["error"].split(":")[0] for b in bodies) == ["invalid_json", "invalid_payload",
                                                                    "invalid_payload"]
        assert "bad-1" in [b["id"] for b in bodies]
        assert env.sample("kitt_messages_rejected_total", reason="invalid_payload") == 2
        assert env.sample("kitt_messages_rejected_total", reason="invalid_json") == 1
    assert len(await _events(cfg.database.url, "input.rejected")) == 3


async def test_a_failing_handler_marks_its_row_failed_and_the_spine_goes_on(broker: Mosquitto, cfg: Config) -> None:
    seen: list[str] = []

    async def handler(msg: Inbound) -> None:
        if msg.payload == b"boom":
            raise RuntimeError("handler bug")
        seen.append(msg.payload.decode())

    route = Route(filter=f"test/{cfg.hub.id}/cmd", handler=handler, name="cmd")
    async with running_spine(cfg, routes=[route]) as env, TestClient(broker.port) as c:
        for p in (b"one", b"boom", b"two"):
            await c.publish(route.filter, p, user_properties=[("id", p.decode())])
        for _ in range(200):
            if len(seen) == 2 and env.sample("kitt_handler_errors_total", handler="cmd") == 1:
                break
            await asyncio.sleep(0.05)
        assert sorted(seen) == ["one", "two"]
    conn = await asyncpg.connect(cfg.database.url)
    try:
        states = dict(await conn.fetch("SELECT split_part(dedupe_key, '|', 3), state FROM inbox"))
        failure = await conn.fetchval("SELECT error FROM inbox WHERE state = 'failed'")
    finally:
        await conn.close()
    assert states == {"one": "done", "boom": "failed", "two": "done"}
    assert "handler bug" in failure
    assert [e["body"]["error"] for e in await _events(cfg.database.url, "handler.failed")] == [
        "RuntimeError: handler bug"]


async def test_outbox_rows_go_out_in_order_with_their_idempotency_key(broker: Mosquitto, cfg: Config) -> None:
    topic = f"test/{uuid.uuid4().hex[:8]}/cmd"
    async with running_spine(cfg) as env, TestClient(broker.port) as c:
        got = await c.collect(topic)
        for i in range(60):
            await env.spine.send(topic=topic, payload={"n": i}, key=f"k{i}", qos=2)
        msgs = await got.wait_for(60, 20)
        assert [json.loads(m.payload)["n"] for m in msgs] == list(range(60))
        assert [m.user_properties["id"] for m in msgs] == [f"k{i}" for i in range(60)]
        assert await env.spine.send(topic=topic, payload={"n": 0}, key="k0") is None  # the key was used
        await asyncio.sleep(0.3)
        assert len(got.messages) == 60
        assert await env.spine.relay.drain(5)
    conn = await asyncpg.connect(cfg.database.url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    finally:
        await conn.close()


async def test_rows_left_pending_by_a_crash_are_resumed_at_start(broker: Mosquitto, cfg: Config) -> None:
    """A previous process (same client id) committed and acknowledged a request, then died before handling."""
    ask = f"kitt/{cfg.hub.id}/ask"
    async with running_spine(cfg, plugins=("handlers.ask",)):
        pass  # creates the schema
    conn = await asyncpg.connect(cfg.database.url)
    try:
        await conn.execute(
            """INSERT INTO inbox (dedupe_key, topic, payload, properties, qos, claimed_by, claimed_until)
               VALUES ($1, $2, $3, '{}'::jsonb, 2, $4, now() + interval '5 minutes')""",
            f"ask|{ask}|left", ask, json.dumps({"id": "left", "text": "hello", "site": "attic"}).encode(),
            cfg.client_id)
    finally:
        await conn.close()
    async with TestClient(broker.port) as c:
        replies = await c.collect(f"kitt/{cfg.hub.id}/reply/attic")
        async with running_spine(cfg, plugins=("handlers.ask",)):
            [reply] = await replies.wait_for(1, 15)
            assert reply.json()["id"] == "left"
            await replies.settle(0.3)
            assert len(replies.messages) == 1
    assert [e["correlation_id"] for e in await _events(cfg.database.url, "ask.answered")] == ["left"]


async def test_a_failing_block_rolls_back_only_its_group_and_the_others_run_again(
        broker: Mosquitto, db_dsn: str, state_dir: Path) -> None:
    # One lane (pool_max 3): blocks share a transaction; B finishes its block while A waits for the lane,
    # then A's block raises, so the group (with B's writes) rolls back and B must run again.
    cfg = make_config(dsn=db_dsn, state_dir=state_dir, mqtt_port=broker.port, database={"pool_max": 3})
    b_inside = asyncio.Event()
    b_release = asyncio.Event()
    runs = {"a": 0, "b": 0}

    async def handler(msg: Inbound) -> None:
        who = msg.payload.decode()
        runs[who] += 1
        env = state["env"]
        if who == "a":
            await b_inside.wait()
        async with env.spine.handling(msg) as conn:
            await env.store.record_event("test.effect", actor=who, correlation_id=who, conn=conn)
            if who == "b" and runs["b"] == 1:
                b_inside.set()
                await b_release.wait()
            if who == "a":
                raise ValueError("a fails inside its block")

    state: dict[str, SpineEnv] = {}
    route = Route(filter=f"test/{cfg.hub.id}/grp", handler=handler, name="grp", grouped=True)
    async with running_spine(cfg, routes=[route]) as env, TestClient(broker.port) as c:
        state["env"] = env
        await c.publish(route.filter, b"b", user_properties=[("id", "b")])
        await asyncio.wait_for(b_inside.wait(), 10)
        await c.publish(route.filter, b"a", user_properties=[("id", "a")])
        await asyncio.sleep(0.2)  # A reaches the lane and waits behind B's open block
        b_release.set()
        for _ in range(200):
            if runs["b"] == 2 and env.sample("kitt_handler_errors_total", handler="grp") == 1:
                break
            await asyncio.sleep(0.05)
    assert runs == {"a": 1, "b": 2}
    assert [e["correlation_id"] for e in await _events(db_dsn, "test.effect")] == ["b"]


async def test_a_row_finished_elsewhere_meanwhile_commits_nothing(broker: Mosquitto, cfg: Config) -> None:
    """Another instance finished the row while our block ran (its claim had expired): we roll back."""
    outcome: list[str] = []

    async def handler(msg: Inbound) -> None:
        env = state["env"]
        try:
            async with env.spine.handling(msg) as conn:
                await env.store.record_event("test.effect", actor="late", correlation_id="late", conn=conn)
                other = await asyncpg.connect(cfg.database.url)
                try:
                    await other.execute("UPDATE inbox SET state = 'done' WHERE id = $1", msg.inbox_id)
                finally:
                    await other.close()
        except AlreadyHandled:
            outcome.append("already handled")
            raise
        outcome.append("committed")

    state: dict[str, SpineEnv] = {}
    route = Route(filter=f"test/{cfg.hub.id}/late", handler=handler, name="late", grouped=True)
    async with running_spine(cfg, routes=[route]) as env, TestClient(broker.port) as c:
        state["env"] = env
        await c.publish(route.filter, b"x", user_properties=[("id", "late-1")])
        for _ in range(200):
            if outcome:
                break
            await asyncio.sleep(0.05)
        assert env.sample("kitt_handler_errors_total", handler="late") == 0
    assert outcome == ["already handled"]
    assert await _events(cfg.database.url, "test.effect") == []


async def test_a_retained_command_queued_while_down_is_not_executed(broker: Mosquitto, cfg: Config) -> None:
    """Retain As Published: the copy queued in the hub's session keeps its retain flag, so a command route
    (accept_retained=False) rejects it instead of running it."""
    ran: list[bytes] = []

    async def handler(msg: Inbound) -> None:
        ran.append(msg.payload)

    route = Route(filter=f"test/{cfg.hub.id}/door/set", handler=handler, name="door", accept_retained=False, qos=1)
    async with running_spine(cfg, routes=[route]):
        pass  # the session and its subscription exist from now on
    async with TestClient(broker.port) as c:
        await c.publish(route.filter, b"UNLOCK", qos=1, retain=True)
        try:
            async with running_spine(cfg, routes=[route]) as env:
                for _ in range(100):
                    if env.sample("kitt_messages_rejected_total", reason="retained_command") >= 1:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)
                assert env.sample("kitt_messages_rejected_total", reason="retained_command") >= 1
                await c.publish(route.filter, b"LOCK", qos=1)  # a live command still runs
                for _ in range(100):
                    if ran:
                        break
                    await asyncio.sleep(0.05)
        finally:
            await c.publish(route.filter, b"", qos=1, retain=True)  # clear the retained message
    assert ran == [b"LOCK"]
