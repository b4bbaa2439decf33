"""Outbox relay, exactly once on the wire: the hub is SIGKILLed while QoS 2 commands are mid-handshake.

Requests to ``kitt/<hub>/test/fanout`` each write 25 QoS 2 commands to the outbox in one transaction, so the
relay has handshakes in flight most of the time. Each kill waits until the database shows a row whose packet
id is written but whose ``sent_at`` is not (a handshake the hub is in the middle of), sometimes a few
milliseconds more (to land after the PUBREC/PUBREL too), then SIGKILLs the hub and restarts it.

What is asserted: every command is delivered, and each exactly once *on the wire* — raw deliveries counted by
their user property ``id``, not deduplicated — and every outbox row ends up sent. Before the packet ids were
kept on the rows (docs/spine.md, "Packet ids on the outbox rows"), a kill between PUBREC and the ``sent_at``
commit made the next process release the broker's held copy *and* publish the row again: two deliveries.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from tests.support.config import make_config_dict
from tests.support.hubproc import HubProcess, db_value
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = pytest.mark.fault

REQUESTS = 24
FANOUT = 25
KILLS = 8
PUBLISH_SECONDS = 10.0


async def _kill_mid_handshake(hub: HubProcess, dsn: str, rng: random.Random,
                              finished: asyncio.Event) -> tuple[int, int] | None:
    """SIGKILL once a handshake is open in the database; returns (unreleased, released) rows it cut.

    None (no kill): the requests are all published and no handshake opened any more.
    """
    conn = await asyncpg.connect(dsn)
    try:
        while not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL AND packet_id IS NOT NULL)"):
            if finished.is_set() and not await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL)"):
                return None
            await asyncio.sleep(0.002)
        if rng.random() < 0.5:
            await asyncio.sleep(rng.uniform(0.0, 0.01))  # later in the handshake: PUBREC, PUBREL, PUBCOMP
        hub.kill()  # at once, not via a thread: a handshake takes about a millisecond on a fast machine
        row = await conn.fetchrow(
            """SELECT count(*) FILTER (WHERE NOT released) AS unreleased, count(*) FILTER (WHERE released) AS released
               FROM outbox WHERE sent_at IS NULL AND packet_id IS NOT NULL""")
    finally:
        await conn.close()
    return int(row["unreleased"]), int(row["released"])


async def test_sigkill_mid_handshake_delivers_every_command_exactly_once(broker: Mosquitto, db_dsn: str,
                                                                        tmp_path: Path) -> None:
    rng = random.Random()
    cfg = make_config_dict(dsn=db_dsn, state_dir=tmp_path / "state", mqtt_port=broker.port,
                           plugins=("tests.support.spine_routes",))
    base = f"kitt/{cfg['hub']['id']}/test"
    requests = [f"f{i:03d}" for i in range(REQUESTS)]
    keys = {f"cmd:{rid}:{i}" for rid in requests for i in range(FANOUT)}
    hub = HubProcess(cfg, tmp_path)
    hub.start()
    cut: list[tuple[int, int]] = []
    try:
        async with TestClient(broker.port, clean_start=False, session_expiry_s=3600) as collector, \
                TestClient(broker.port) as publisher:
            commands = await collector.collect(f"{base}/out/#")

            published = asyncio.Event()

            async def publish_all() -> None:
                start = time.monotonic()
                for i, rid in enumerate(requests):
                    await asyncio.sleep(max(0.0, start + i * PUBLISH_SECONDS / REQUESTS - time.monotonic()))
                    await publisher.publish(f"{base}/fanout", {"id": rid, "count": FANOUT}, qos=2, wait=False)
                await publisher.flush(60)
                published.set()

            async def kill_and_restart() -> None:
                # KILLS kills, and more (up to 4 × KILLS) until one of them cut an open handshake.
                for n in range(4 * KILLS):
                    if n >= KILLS and any(u + r for u, r in cut):
                        return
                    await asyncio.sleep(rng.uniform(0.05, 0.4))
                    at_kill = await _kill_mid_handshake(hub, db_dsn, rng, published)
                    if at_kill is None:
                        return  # all work done before this kill
                    cut.append(at_kill)
                    await asyncio.to_thread(hub.start)

            await asyncio.gather(publish_all(), kill_and_restart())
            for _ in range(900):
                if {m.user_properties.get("id") for m in commands.messages} >= keys:
                    break
                await asyncio.sleep(0.1)
            else:
                missing = sorted(keys - {m.user_properties.get("id") for m in commands.messages})
                raise AssertionError(f"{len(missing)} commands never delivered, e.g. {missing[:5]}\n"
                                     f"{hub.log_tail(30)}")
            await commands.settle(1.0)
            raw = Counter(m.user_properties.get("id") for m in commands.messages)
        assert hub.stop() == 0
    finally:
        hub.kill()

    doubled = {key: n for key, n in raw.items() if n > 1}
    print(f"\noutbox exactly-once: {len(cut)} kills cut (unreleased, released) handshakes {cut}; "
          f"{sum(raw.values())} commands raw, {len(raw)} by key")
    assert set(raw) == keys
    assert not doubled, f"{len(doubled)} commands delivered more than once, e.g. {sorted(doubled.items())[:5]}"
    assert sum(raw.values()) == len(keys)
    # The kills really cut handshakes open in the database (else the test proved nothing).
    assert sum(u + r for u, r in cut) > 0, cut
    assert await db_value(db_dsn, "SELECT count(*) FROM outbox") == len(keys)
    assert await db_value(db_dsn, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
