"""Crash: 1,000 QoS 2 requests while the hub is SIGKILLed at 5 random moments and restarted each time.

What is asserted, exactly:
- effects are exact: for every request id there is exactly one ``ask.answered`` audit event, one inbox row
  (``done``) and one outbox row (sent) — 0 lost, 0 doubled. This holds by construction: the inbox row is
  committed before the PUBREC, and the reply, the event and the ``done`` mark commit in one transaction;
- every id got a reply;
- every reply is delivered exactly once *on the wire* (0 raw duplicates): each outbox row's packet id and
  PUBREC/PUBREL stage are persisted before each step, and the next process finishes the handshake under the
  same id instead of publishing the row again (docs/spine.md, "Packet ids on the outbox rows");
- the packet ids a previous process left at the broker are never taken over by a new message (once a loss:
  the broker took the new PUBLISH for a resend of the held one).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from tests.support.config import make_config_dict
from tests.support.hubproc import HubProcess, db_value, event_counts
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient, check_replies

pytestmark = pytest.mark.fault

REQUESTS = 1000
KILLS = 5
PUBLISH_SECONDS = 6.0


async def test_sigkill_during_processing_loses_and_doubles_nothing(broker: Mosquitto, db_dsn: str,
                                                                    tmp_path: Path) -> None:
    rng = random.Random()
    cfg = make_config_dict(dsn=db_dsn, state_dir=tmp_path / "state", mqtt_port=broker.port, plugins=("handlers.ask",))
    hub_id = cfg["hub"]["id"]
    ids = {f"req-{i:04d}" for i in range(REQUESTS)}
    hub = HubProcess(cfg, tmp_path)
    hub.start()
    try:
        async with TestClient(broker.port, clean_start=False, session_expiry_s=3600) as collector, \
                TestClient(broker.port) as publisher:
            replies = await collector.collect(f"kitt/{hub_id}/reply/#")
            kill_at = sorted(rng.uniform(0.3, PUBLISH_SECONDS) for _ in range(KILLS))

            async def publish_all() -> None:
                start = time.monotonic()
                for i, rid in enumerate(sorted(ids)):
                    delay = start + i * PUBLISH_SECONDS / REQUESTS - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await publisher.publish(f"kitt/{hub_id}/ask", {"id": rid, "text": f"n{i}", "site": "lab"},
                                            qos=2, wait=False)
                await publisher.flush(60)

            async def kill_and_restart() -> list[int]:
                start = time.monotonic()
                answered_at_kill = []
                for moment in kill_at:
                    await asyncio.sleep(max(0.0, start + moment - time.monotonic()))
                    answered_at_kill.append(len({m.json()["id"] for m in replies.messages}))
                    await asyncio.to_thread(hub.kill)
                    await asyncio.to_thread(hub.start)
                return answered_at_kill

            _, answered_at_kill = await asyncio.gather(publish_all(), kill_and_restart())
            for _ in range(900):
                if {m.json()["id"] for m in replies.messages} >= ids:
                    break
                await asyncio.sleep(0.1)
            else:
                missing = sorted(ids - {m.json()["id"] for m in replies.messages})
                raise AssertionError(f"{len(missing)} unanswered, e.g. {missing[:5]}; "
                                     f"{await _where(db_dsn, missing)}\n{hub.log_tail(30)}")
            await replies.settle(1.0)
            raw_duplicates = check_replies(replies.messages, ids)
            assert raw_duplicates == 0, f"{raw_duplicates} replies delivered more than once on the wire"
        assert hub.stop() == 0  # and a graceful stop at the end
    finally:
        hub.kill()

    # The kills really fell while requests were being worked on.
    assert any(0 < n < REQUESTS for n in answered_at_kill), answered_at_kill
    assert hub.starts == KILLS + 1
    answered = await event_counts(db_dsn, "ask.answered")
    assert set(answered) == ids
    assert set(answered.values()) == {1}  # exactly one effect each
    assert await db_value(db_dsn, "SELECT count(*) FROM inbox WHERE state = 'done'") == REQUESTS
    assert await db_value(db_dsn, "SELECT count(*) FROM inbox WHERE state <> 'done'") == 0
    assert await db_value(db_dsn, "SELECT count(*) FROM outbox") == REQUESTS
    assert await db_value(db_dsn, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    print(f"\ncrash test: {KILLS} kills at {answered_at_kill} answered; raw duplicate reply deliveries "
          f"{raw_duplicates}")


async def _where(dsn: str, missing: list[str]) -> str:
    """Where the unanswered requests are: their inbox and outbox rows (for the failure message)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        inbox = await conn.fetch("""SELECT split_part(dedupe_key, '|', 3) AS id, state, claimed_by, claimed_until,
                                           received_at, finished_at FROM inbox
                                    WHERE split_part(dedupe_key, '|', 3) = ANY($1::text[])""", missing)
        outbox = await conn.fetch("""SELECT correlation_id, sent_at, claimed_by, claimed_until, attempts FROM outbox
                                     WHERE correlation_id = ANY($1::text[])""", missing)
    finally:
        await conn.close()
    return f"inbox {[dict(r) for r in inbox]} outbox {[dict(r) for r in outbox]}"
