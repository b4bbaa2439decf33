"""Bad input: 10,000 random or malformed payloads across every topic the hub subscribes to.

The hub (a real ``kitt-hub run`` process) stays up, rejects each one on ``kitt/<hub>/error`` with
``{"topic", "error", "id"}``, counts each in ``kitt_messages_rejected_total{reason}``, and its resident
memory after the flood is within a generous margin of what it was after a warm-up.
"""

from __future__ import annotations

import json
import os
import random
import string
from collections import Counter
from pathlib import Path

import pytest

from tests.support.config import make_config_dict
from tests.support.hubproc import HubProcess
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt import TestClient

pytestmark = pytest.mark.integration

TOTAL = 10_000
WARMUP = 1_000
RSS_MARGIN = 40 * 1024 * 1024


def _junk(rng: random.Random) -> bytes:
    """One payload no route accepts (each generator breaks every model, including the shape of ``id``)."""
    kind = rng.randrange(12)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 2048))
    if kind == 1:
        return b""
    if kind == 2:
        return b"[" * rng.randrange(100, 20_000)
    if kind == 3:
        return b'{"id": ' + b'{"a": ' * rng.randrange(300, 3000) + b"1"
    if kind == 4:
        good = json.dumps({"id": "x", "action": "on", "text": "t", "items": [], "n": 1})
        return good[: rng.randrange(1, len(good) - 1)].encode()
    if kind == 5:
        return json.dumps(rng.choice([None, 1, -1.5, "text", [], [1, 2], True])).encode()
    if kind == 6:
        return json.dumps({"id": rng.choice([None, 5.5, [], {}, ""]), "text": "", "action": "explode",
                           "items": "no", "n": "x"}).encode()
    if kind == 7:
        return b'{"id": "\xff\xfe", "text": "\xc3\x28"}'
    if kind == 8:
        return json.dumps({"id": "a" * 5000, "text": "b" * 5000, "n": 10**400 if rng.random() < 0.5 else "1"}).encode()
    if kind == 9:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(1, 300))).encode()
    if kind == 10:
        return b"{" + b'"k":1,' * rng.randrange(1, 500) + b"}"
    return json.dumps({"id": "z" * 65, "n": [1], "items": [{"value": "nan?"}], "action": 1,
                       "text": None}).encode()


async def test_ten_thousand_bad_payloads_are_each_rejected_and_memory_stays_flat(
        broker: Mosquitto, db_dsn: str, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("KITT_TEST_SEED", "20261129")))
    cfg = make_config_dict(dsn=db_dsn, state_dir=tmp_path / "state", mqtt_port=broker.port,
                           plugins=("handlers.ask", "tests.support.spine_routes"))
    hub_id = cfg["hub"]["id"]
    base = f"kitt/{hub_id}"
    # Every subscribed filter, with its wildcards filled in differently each time.
    topics = [lambda: f"{base}/ask",
              lambda: f"{base}/test/cmd/{rng.choice(['lamp', 'door', 'x' * 40, '%20', 'ü'])}",
              lambda: f"{base}/test/deep/{'/'.join(rng.choice('abc') for _ in range(rng.randrange(0, 4)))}".rstrip("/"),
              lambda: f"{base}/test/echo"]

    with HubProcess(cfg, tmp_path) as hub:
        async with TestClient(broker.port) as c:
            errors = await c.collect(f"{base}/error", qos=1)
            replies = await c.collect(f"{base}/reply/#")
            sent_topics: Counter[str] = Counter()

            async def flood(count: int) -> None:
                for i in range(count):
                    topic = rng.choice(topics)()
                    props = [("id", f"bad-{i}-{rng.randrange(10**6)}")] if rng.random() < 0.3 else []
                    await c.publish(topic, _junk(rng), qos=rng.choice((1, 2)), wait=False, user_properties=props)
                    sent_topics[topic.split("/")[2] if "/test/" not in topic else topic.split("/")[3]] += 1
                await c.flush(60)

            await flood(WARMUP)
            await errors.wait_for(WARMUP, 60)
            rss_before = hub.rss_bytes()
            await flood(TOTAL - WARMUP)
            got = await errors.wait_for(TOTAL, 120)
            await errors.settle(0.5)
            rss_after = hub.rss_bytes()

            assert hub.running
            status, _ = hub.get("/healthz")
            assert status == 200
            assert len(got) == TOTAL  # each one rejected, none twice
            bodies = [m.json() for m in got]
            assert all(set(b) == {"topic", "error", "id"} for b in bodies)
            assert {b["topic"].split("/")[2] if "/test/" not in b["topic"] else b["topic"].split("/")[3]
                    for b in bodies} == set(sent_topics)
            metrics = hub.metrics()
            rejected = {k: v for k, v in metrics.items() if k.startswith("kitt_messages_rejected_total")}
            assert sum(rejected.values()) == TOTAL, rejected
            assert 'kitt_messages_rejected_total{reason="invalid_json"}' in rejected
            assert 'kitt_messages_rejected_total{reason="invalid_payload"}' in rejected
            assert rss_after - rss_before < RSS_MARGIN, (rss_before, rss_after)

            # Still serving: a good request after the flood is answered.
            await c.publish(f"{base}/ask", {"id": "after-the-flood", "text": "still there?", "site": "hall"})
            [reply] = await replies.wait_for(1, 20)
            assert reply.json()["id"] == "after-the-flood"
