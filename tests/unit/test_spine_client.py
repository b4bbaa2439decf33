"""The connection's own pieces: reconnect back-off, the outbound window, the in-flight store, property JSON."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hub.errors import SpineError
from hub.spine.client import RESERVED_IDS, AckTrackingStorage, MqttConnection, OutboundWindow, _BackoffConfig
from hub.spine.inbox import properties_from_json, properties_to_json
from hub.spine.txgroup import PROOF_BLOCKS, SHORT_BLOCK_S, GroupPolicy
from tests.support.config import make_config


async def _nothing(*_: object) -> int:
    return 0


def _connection(tmp_path: Path, **mqtt: object) -> MqttConnection:
    cfg = make_config(dsn="postgresql://x@127.0.0.1:1/x", state_dir=tmp_path, mqtt=mqtt)
    return MqttConnection(settings=cfg.mqtt, client_id="c", status_topic="kitt/x/status", on_message=_nothing,
                          on_connected=_nothing, on_disconnected=lambda: None)


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap(tmp_path: Path) -> None:
    conn = _connection(tmp_path, reconnect_max_s=8.0)
    delays = [conn._backoff() for _ in range(12)]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays[6:]) <= 8.0 and min(delays[6:]) >= 4.0
    # Jitter: two hubs restarting together do not retry in lock-step.
    other = _connection(tmp_path, reconnect_max_s=8.0)
    assert [other._backoff() for _ in range(12)] != delays


def test_gmqtt_reads_a_fresh_delay_for_every_attempt() -> None:
    calls = iter([0.5, 1.0, 2.0])
    cfg = _BackoffConfig({"reconnect_retries": -1, "reconnect_delay": 6}, lambda: next(calls))
    assert [cfg["reconnect_delay"], cfg["reconnect_delay"], cfg["reconnect_delay"]] == [0.5, 1.0, 2.0]
    assert cfg["reconnect_retries"] == -1


async def test_outbound_window_blocks_when_full_and_wakes_on_ack() -> None:
    window = OutboundWindow()
    window.set_capacity(5)
    assert window.capacity == 5 - RESERVED_IDS
    storage = AckTrackingStorage(window)
    futures = []
    for mid in (1, 2):
        storage.push_message(mid, b"publish")
        futures.append(storage.waiter(mid))
    assert window.full()
    waiter = asyncio.create_task(window.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    storage.push_message(1, b"pubrel")  # PUBREC swaps the packet under the same mid: still in flight
    await asyncio.sleep(0.01)
    assert not waiter.done() and window.in_flight == 2
    storage.remove_message_by_mid(1)  # PUBCOMP
    await asyncio.wait_for(waiter, 1)
    assert futures[0].done() and not futures[1].done()


async def test_a_lost_session_fails_the_waiters_so_their_owner_sends_again() -> None:
    window = OutboundWindow()
    window.set_capacity(10)
    storage = AckTrackingStorage(window)
    storage.push_message(7, b"p")
    fut = storage.waiter(7)
    storage.clear()
    with pytest.raises(SpineError):
        await fut
    assert window.in_flight == 0


def test_publish_refuses_while_disconnected(tmp_path: Path) -> None:
    with pytest.raises(SpineError):
        _connection(tmp_path).publish_nowait("a/b", b"x", qos=1)


def test_properties_survive_the_inbox_json() -> None:
    props = {"user_property": [("id", "1"), ("k", "v")], "correlation_data": [b"\x00\xff"],
             "response_topic": ["r/t"], "dup": 0, "retain": 0}
    back = properties_from_json(json.loads(properties_to_json(props)))
    assert back["correlation_data"] == [b"\x00\xff"]
    assert [tuple(p) for p in back["user_property"]] == [("id", "1"), ("k", "v")]
    assert back["response_topic"] == ["r/t"]


def test_group_policy_groups_a_route_only_after_its_blocks_proved_short() -> None:
    policy = GroupPolicy()
    assert not policy.grouped("ask", None)
    for _ in range(PROOF_BLOCKS - 1):
        policy.record("ask", 0.001)
    assert not policy.grouped("ask", None)
    policy.record("ask", 0.001)
    assert policy.grouped("ask", None)
    policy.record("ask", SHORT_BLOCK_S * 10)  # one slow block (a network call inside it): back to solo
    assert not policy.grouped("ask", None)
    for _ in range(PROOF_BLOCKS):
        policy.record("ask", 0.001)
    assert policy.grouped("ask", None)
    assert policy.grouped("voice", True) and not policy.grouped("ask", False)
    assert not policy.grouped(None, None)
