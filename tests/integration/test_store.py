"""The store on the real PostgreSQL: migrations once under concurrency, failed writes reach the caller."""

import asyncio
import subprocess
import sys

import asyncpg
import pytest

from hub.errors import StoreError, StoreWriteError
from hub.metrics import Metrics
from hub.store import Store
from hub.store.migrate import discover

pytestmark = pytest.mark.integration


async def test_two_stores_starting_together_migrate_once(db_dsn: str) -> None:
    stores = [Store(dsn=db_dsn, metrics=Metrics(), pool_min=1, pool_max=2, apply_migrations=False)
              for _ in range(4)]
    await asyncio.gather(*(s.start() for s in stores))
    try:
        applied = await asyncio.gather(*(s.migrate() for s in stores))
        versions = [m.version for m in discover()]
        # Exactly one of them applied everything; the others found nothing to do.
        assert sorted(v for a in applied for v in a) == versions
        assert sum(1 for a in applied if a) == 1
        rows = await stores[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == versions
    finally:
        await asyncio.gather(*(s.stop() for s in stores))


def test_two_migrate_commands_against_one_database_apply_once(db_dsn: str, tmp_path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[hub]\nstate_dir = "{tmp_path}"\n[database]\nurl = "{db_dsn}"\n')
    procs = [subprocess.Popen([sys.executable, "-m", "hub.cli", "migrate", "--config", str(cfg)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    said = sorted(o[0].strip().split(":")[0] for o in outs)
    assert said[0].startswith("applied") and said[1] == "schema is up to date"


async def test_audit_events_are_append_only(db_dsn: str) -> None:
    store = Store(dsn=db_dsn, metrics=Metrics(), pool_min=1, pool_max=2)
    await store.start()
    try:
        event_id = await store.record_event("test.kind", actor="t", subject="s", correlation_id="c1", body={"a": 1})
        events = await store.events(correlation_id="c1")
        assert events[0]["id"] == event_id and events[0]["body"] == {"a": 1}
        with pytest.raises(StoreWriteError):
            await store.write("UPDATE events SET kind = 'x' WHERE id = $1", event_id)
    finally:
        await store.stop()


async def test_a_connection_broken_mid_write_reaches_the_caller_and_the_metric(db_dsn: str) -> None:
    metrics = Metrics()
    store = Store(dsn=db_dsn, metrics=metrics, pool_min=1, pool_max=2)
    await store.start()
    admin = await asyncpg.connect(db_dsn)
    try:
        before = metrics.db_write_errors._value.get()

        async def slow_write() -> None:
            async with store.transaction() as conn:
                await conn.execute("INSERT INTO events (actor, kind) VALUES ('t', 'before-sleep')")
                await conn.execute("SELECT pg_sleep(10)")

        task = asyncio.create_task(slow_write())
        # Find the backend that is sleeping, then kill it: the write is interrupted by the server.
        for _ in range(100):
            pid = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)' AND datname = current_database()")
            if pid:
                break
            await asyncio.sleep(0.05)
        assert pid, "the write never started"
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(StoreWriteError):
            await task
        assert metrics.db_write_errors._value.get() == before + 1
        # Nothing of the interrupted transaction committed.
        assert await admin.fetchval("SELECT count(*) FROM events WHERE kind = 'before-sleep'") == 0
    finally:
        await admin.close()
        await store.stop()


def test_two_hubs_starting_together_on_one_database_migrate_once(db_dsn: str, tmp_path) -> None:
    from tests.support.config import make_config_dict
    from tests.support.hubproc import HubProcess

    hubs = [HubProcess(make_config_dict(dsn=db_dsn, state_dir=tmp_path / f"h{i}", plugins=("handlers.ask",),
                                        hub={"log_level": "info"}), tmp_path / f"h{i}", name=f"hub{i}")
            for i in range(2)]
    try:
        for hub in hubs:
            hub.start(wait_ready=False)
        for hub in hubs:
            hub.wait_ready(90)
        logs = [hub.log_path.read_text() for hub in hubs]
    finally:
        for hub in hubs:
            hub.stop()
    versions = [m.version for m in discover()]
    applied = sum(log.count("migration applied") for log in logs)
    assert applied == len(versions), logs  # every migration once, by one of the two
    assert sum(1 for log in logs if "migration applied" in log) == 1


async def test_only_unflushed_writes_skip_the_wal_flush(db_dsn: str) -> None:
    # The outbox's stamps and PUBREC marks are written with flush=False; inbox rows and transitions must not.
    store = Store(dsn=db_dsn, metrics=Metrics(), pool_min=1, pool_max=2)
    await store.start()
    try:
        assert await store.fetchval("SELECT current_setting('synchronous_commit')") == "on"
        async with store.transaction() as conn:
            assert await conn.fetchval("SELECT current_setting('synchronous_commit')") == "on"
        row = await store.write_returning("SELECT current_setting('synchronous_commit') AS s", flush=False)
        assert row is not None and row["s"] == "off"
        status = await store.write("UPDATE events SET kind = kind WHERE false", flush=False)
        assert status == "UPDATE 0"
        event_id = await store.record_event("test.kind", actor="t")
        with pytest.raises(StoreWriteError):  # append-only: refused, and the caller hears of it
            await store.write("UPDATE events SET kind = 'x' WHERE id = $1", event_id, flush=False)
    finally:
        await store.stop()
    with pytest.raises(StoreError):
        await store.write("SELECT 1", flush=False)
