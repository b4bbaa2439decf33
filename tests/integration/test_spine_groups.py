"""Grouped handler transactions (``hub.spine.txgroup``) on a private Mosquitto and the real PostgreSQL: the
appends written at the group's end, blocks that send statements of their own, a duplicate outbox key, a row
finished elsewhere, and a block whose data cannot be written (it fails alone, the others commit once).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hub.config import Config
from hub.spine import AlreadyHandled, Inbound, Route
from hub.spine.txgroup import append_ctes
from tests.support.config import make_config
from tests.support.db import fetch
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import SpineEnv, TestClient, running_spine
from tests.support.wait import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def cfg(broker: Mosquitto, db_dsn: str, state_dir: Path) -> Config:
    # pool_max 3: one lane, so concurrent blocks share transactions.
    return make_config(dsn=db_dsn, state_dir=state_dir, mqtt_port=broker.port, database={"pool_max": 3})


async def test_appends_and_own_statements_commit_together_with_the_done_marks(broker: Mosquitto,
                                                                            cfg: Config) -> None:
    returned: dict[str, tuple[int | None, int]] = {}
    state: dict[str, SpineEnv] = {}

    async def handler(msg: Inbound) -> None:
        env, n = state["env"], int(msg.payload)
        async with env.spine.handling(msg) as conn:
            if n % 2:  # half the blocks also send a statement of their own: the group then has a transaction
                await conn.execute("INSERT INTO events (actor, kind, correlation_id) VALUES ('t', 'test.direct', $1)",
                                   str(n))
            row = await env.spine.enqueue(conn, topic=f"test/{cfg.hub.id}/out", payload={"n": n}, key=f"out-{n}")
            event = await env.store.record_event("test.appended", actor="t", correlation_id=str(n), conn=conn)
            returned[str(n)] = (row, event)

    route = Route(filter=f"test/{cfg.hub.id}/grp", handler=handler, name="grp", grouped=True)
    async with running_spine(cfg, routes=[route]) as env, TestClient(broker.port) as c:
        state["env"] = env
        out = await c.collect(f"test/{cfg.hub.id}/out")
        await asyncio.gather(*(c.publish(route.filter, str(n).encode(), user_properties=[("id", f"g{n}")])
                               for n in range(40)))
        received = await out.wait_for(40, 20)
        await out.settle(0.3)
    assert sorted(m.json()["n"] for m in received) == list(range(40))
    assert len(out.messages) == 40
    appended = {r["correlation_id"]: r["id"] for r in await fetch(
        cfg.database.url, "SELECT id, correlation_id FROM events WHERE kind = 'test.appended'")}
    assert appended == {k: event for k, (_row, event) in returned.items()}  # the ids handed out are the rows'
    direct = await fetch(cfg.database.url, "SELECT correlation_id FROM events WHERE kind = 'test.direct'")
    assert sorted(int(r["correlation_id"]) for r in direct) == list(range(1, 40, 2))
    outbox = {r["idempotency_key"]: r["id"] for r in await fetch(
        cfg.database.url,
        "SELECT id, idempotency_key FROM outbox WHERE sent_at IS NOT NULL AND idempotency_key LIKE 'out-%'")}
    assert outbox == {f"out-{k}": row for k, (row, _event) in returned.items()}
    pending = await fetch(cfg.database.url, "SELECT count(*) AS n FROM inbox WHERE dedupe_key LIKE 'grp|%' "
                                             "AND state <> 'done'")
    assert pending[0]["n"] == 0


@pytest.mark.parametrize("own_statement", [False, True], ids=["appends-only", "with-own-statement"])
async def test_a_row_finished_elsewhere_rolls_back_appends_and_statements(broker: Mosquitto, cfg: Config,
                                                                          own_statement: bool) -> None:
    outcome: list[str] = []
    state: dict[str, SpineEnv] = {}

    async def handler(msg: Inbound) -> None:
        env = state["env"]
        try:
            async with env.spine.handling(msg) as conn:
                if own_statement:
                    await conn.execute("INSERT INTO events (actor, kind) VALUES ('late', 'test.late')")
                await env.spine.enqueue(conn, topic=f"test/{cfg.hub.id}/late-out", payload={}, key="late-out")
                await env.store.record_event("test.late", actor="late", conn=conn)
                await fetch(cfg.database.url, "UPDATE inbox SET state = 'done' WHERE id = $1", msg.inbox_id)
        except AlreadyHandled:
            outcome.append("already handled")
            raise
        outcome.append("committed")

    route = Route(filter=f"test/{cfg.hub.id}/late", handler=handler, name="late", grouped=True)
    async with running_spine(cfg, routes=[route]) as env, TestClient(broker.port) as c:
        state["env"] = env
        out = await c.collect(f"test/{cfg.hub.id}/late-out")
        await c.publish(route.filter, b"x", user_properties=[("id", f"late-{own_statement}")])

        await eventually(lambda: outcome, timeout=15.0, interval=0.05)
        await out.settle(0.3)
        assert env.sample("kitt_handler_errors_total", handler="late") == 0
    assert outcome == ["already handled"]
    assert out.messages == []
    assert await fetch(cfg.database.url, "SELECT id FROM events WHERE kind = 'test.late'") == []
    assert await fetch(cfg.database.url, "SELECT id FROM outbox WHERE idempotency_key = 'late-out'") == []


async def test_an_outbox_key_enqueued_before_is_dropped_at_the_commit(broker: Mosquitto, cfg: Config) -> None:
    state: dict[str, SpineEnv] = {}
    ids: dict[str, int | None] = {}

    async def handler(msg: Inbound) -> None:
        env, key = state["env"], msg.payload.decode()
        async with env.spine.handling(msg) as conn:
            ids[key] = await env.spine.enqueue(conn, topic=f"test/{cfg.hub.id}/dup-out", payload={"key": key},
                                               key=key)

    route = Route(filter=f"test/{cfg.hub.id}/dup", handler=handler, name="dup", grouped=True)
    async with running_spine(cfg, routes=[route]) as env, TestClient(broker.port) as c:
        state["env"] = env
        await fetch(cfg.database.url, """INSERT INTO outbox (idempotency_key, topic, payload, sent_at)
                                          VALUES ('dup-key', 'test/dup', 'old', now())""")
        out = await c.collect(f"test/{cfg.hub.id}/dup-out")
        await asyncio.gather(*(c.publish(route.filter, key.encode(), user_properties=[("id", key)])
                               for key in ("dup-key", "fresh-1", "fresh-2")))
        await out.wait_for(2, 15)
        await out.settle(0.5)
    assert sorted(m.json()["key"] for m in out.messages) == ["fresh-1", "fresh-2"]
    rows = {r["idempotency_key"]: r["id"] for r in await fetch(
        cfg.database.url, "SELECT id, idempotency_key FROM outbox WHERE idempotency_key = ANY($1::text[])",
        ["dup-key", "fresh-1", "fresh-2"])}
    assert rows["fresh-1"] == ids["fresh-1"] and rows["fresh-2"] == ids["fresh-2"]
    assert rows["dup-key"] != ids["dup-key"]  # the old row stays; the new one was never written


async def test_a_block_whose_data_cannot_be_written_fails_alone(broker: Mosquitto, cfg: Config) -> None:
    """jsonb refuses a NUL character: the group's statement fails, its handlers run again one transaction
    each, so the bad one fails on its own and every good one commits exactly once."""
    runs: dict[str, int] = {}
    state: dict[str, SpineEnv] = {}

    async def handler(msg: Inbound) -> None:
        env, who = state["env"], msg.payload.decode()
        runs[who] = runs.get(who, 0) + 1
        async with env.spine.handling(msg) as conn:
            text = "bad \x00 byte" if who == "bad" else who
            await env.store.record_event("test.poison", actor="t", correlation_id=who, body={"text": text}, conn=conn)

    route = Route(filter=f"test/{cfg.hub.id}/poison", handler=handler, name="poison", grouped=True)
    names = ["good-1", "good-2", "bad", "good-3", "good-4"]
    async with running_spine(cfg, routes=[route]) as env, TestClient(broker.port) as c:
        state["env"] = env
        await asyncio.gather(*(c.publish(route.filter, n.encode(), user_properties=[("id", f"p-{n}")])
                               for n in names))

        async def settled() -> bool:
            rows = await fetch(cfg.database.url, "SELECT state FROM inbox WHERE dedupe_key LIKE 'poison|%'")
            return len(rows) == 5 and all(r["state"] != "pending" for r in rows)

        await eventually(settled, timeout=15.0, interval=0.05)
        assert env.sample("kitt_handler_errors_total", handler="poison") == 1
    events = await fetch(cfg.database.url, "SELECT correlation_id FROM events WHERE kind = 'test.poison'")
    assert sorted(r["correlation_id"] for r in events) == ["good-1", "good-2", "good-3", "good-4"]
    states = {r["dedupe_key"].rsplit("|", 1)[1]: r["state"] for r in await fetch(
        cfg.database.url, "SELECT dedupe_key, state FROM inbox WHERE dedupe_key LIKE 'poison|%'")}
    assert states == {"p-bad": "failed", **{f"p-{n}": "done" for n in names if n != "bad"}}


async def test_a_transaction_with_deferred_appends_writes_them_with_its_commit(broker: Mosquitto,
                                                                               cfg: Config) -> None:
    # What a hazard approval uses: its device command and audit events in one statement before the COMMIT.
    async with running_spine(cfg, routes=[]) as env, TestClient(broker.port) as c:
        out = await c.collect(f"test/{cfg.hub.id}/deferred")
        async with env.spine.transaction(defer_appends=True) as conn:
            row = await env.spine.enqueue(conn, topic=f"test/{cfg.hub.id}/deferred", payload={"n": 1}, key="d-1")
            event = await env.store.record_event("test.deferred", actor="t", correlation_id="d-1", conn=conn)
            # Not written yet: appended, to go with the commit.
            assert await conn.fetchval("SELECT count(*) FROM outbox WHERE idempotency_key = 'd-1'") == 0
        rows = await fetch(cfg.database.url, "SELECT id FROM outbox WHERE idempotency_key = 'd-1'")
        events = await fetch(cfg.database.url, "SELECT id FROM events WHERE kind = 'test.deferred'")
        assert [r["id"] for r in rows] == [row] and [r["id"] for r in events] == [event]

        with pytest.raises(RuntimeError):
            async with env.spine.transaction(defer_appends=True) as conn:
                await env.spine.enqueue(conn, topic=f"test/{cfg.hub.id}/deferred", payload={"n": 2}, key="d-2")
                raise RuntimeError("the block failed: nothing of it is written")
        async with env.spine.transaction(defer_appends=True) as conn:  # a key enqueued before: not written again
            await env.spine.enqueue(conn, topic=f"test/{cfg.hub.id}/deferred", payload={"n": 3}, key="d-1")
        received = await out.wait_for(1, 10)
        await out.settle(0.5)
    assert [m.json() for m in received] == [{"n": 1}] and len(out.messages) == 1
    assert await fetch(cfg.database.url, "SELECT id FROM outbox WHERE idempotency_key = 'd-2'") == []


async def test_rows_written_by_one_appending_statement_carry_their_packet_ids(broker: Mosquitto, cfg: Config) -> None:
    # How an approval writes its command: the row is committed with its packet id, so the relay publishes it
    # without a stamp of its own; a statement whose guard did not match writes nothing and keeps no id.
    guarded = "WITH g AS (SELECT 1 AS one WHERE $1), {appends} SELECT ARRAY(SELECT id FROM ob) AS written FROM g"
    sql = guarded.format(appends=append_ctes(2, only_if="g"))
    async with running_spine(cfg, routes=[]) as env, TestClient(broker.port) as c:
        out = await c.collect(f"test/{cfg.hub.id}/stamped")
        window = env.spine.connection.window
        before = window.in_flight
        async with env.spine.appending() as batch:
            row_id = await env.spine.enqueue(batch.conn, topic=f"test/{cfg.hub.id}/stamped", payload={"n": 1},
                                             key="s-1")
            assert await batch.write(sql, True) is not None
            # Committed, not yet handed to the relay (that happens when the block ends): the id is the row's own.
            row = (await fetch(cfg.database.url, "SELECT packet_id, packet_session FROM outbox WHERE id = $1",
                               row_id))[0]
            assert row["packet_id"] == batch.packet_ids[row_id] and row["packet_session"] == cfg.client_id
        async with env.spine.appending() as batch:
            await env.spine.enqueue(batch.conn, topic=f"test/{cfg.hub.id}/stamped", payload={"n": 2}, key="s-2")
            assert await batch.write(sql, False) is None
        received = await out.wait_for(1, 10)
        await out.settle(0.5)
        assert [m.json() for m in received] == [{"n": 1}] and len(out.messages) == 1
        await eventually(lambda: window.in_flight == before, timeout=10)  # both ids are free again
    assert await fetch(cfg.database.url, "SELECT id FROM outbox WHERE idempotency_key = 's-2'") == []
