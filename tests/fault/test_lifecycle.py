"""The hub under systemd's eyes and on SIGTERM: READY=1, watchdog pings from the loop, graceful drain."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from tests.support.config import REPO, make_config_dict
from tests.support.hubproc import HubProcess, dumps_toml
from tests.support.mqtt import TestClient

pytestmark = pytest.mark.fault


def _recv_all(sock: socket.socket, until: float) -> list[tuple[float, str]]:
    got = []
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        got.append((time.monotonic(), data.decode()))
    return got


def test_ready_status_and_watchdog_pings_that_stop_when_the_loop_blocks(db_dsn: str, state_dir: Path) -> None:
    cfg = state_dir / "hub.toml"
    cfg.write_text(dumps_toml(make_config_dict(dsn=db_dsn, state_dir=state_dir, plugins=("handlers.ask",))))
    sock_path = state_dir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000", "KITT_TEST_HOOKS": "1",
           "KITT_TEST_BLOCK_S": "2"}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "run", "--config", str(cfg)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        messages = []
        ready_at = None
        while time.monotonic() - started < 30 and ready_at is None:
            for at, text in _recv_all(sock, time.monotonic() + 0.5):
                messages.append((at, text))
                if "READY=1" in text:
                    ready_at = at
        assert ready_at is not None, messages
        print(f"READY=1 after {ready_at - started:.2f}s")
        assert any(t.startswith("STATUS=") for _, t in messages)
        # Pings every 0.2 s while the loop turns ...
        pings = [at for at, t in _recv_all(sock, time.monotonic() + 1.5) if t == "WATCHDOG=1"]
        assert len(pings) >= 4
        # ... and none while a handler blocks the loop for 2 s.
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.1)
        blocked = _recv_all(sock, time.monotonic() + 1.5)
        assert [t for _, t in blocked if t == "WATCHDOG=1"] == []
        after = [t for _, t in _recv_all(sock, time.monotonic() + 2.0) if t == "WATCHDOG=1"]
        assert len(after) >= 2, "pings resume once the loop turns again"
        proc.send_signal(signal.SIGTERM)
        tail = _recv_all(sock, time.monotonic() + 10)
        assert proc.wait(20) == 0
        assert any(t.startswith("STOPPING=1") for _, t in tail)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


async def test_sigterm_with_50_in_flight_answers_each_exactly_once(db_dsn: str, state_dir: Path) -> None:
    config = make_config_dict(dsn=db_dsn, state_dir=state_dir, plugins=("tests.support.slow_plugin",),
                              hub={"drain_timeout_s": 0.5})
    base = f"kitt/{config['hub']['id']}"
    hub = HubProcess(config, state_dir)
    hub.start()
    try:
        async with TestClient(1883) as client:
            replies = await client.collect(f"{base}/slow/reply")
            for i in range(50):
                await client.publish(f"{base}/slow", {"id": f"r{i}", "seconds": 0.3}, wait=False)
            await client.flush()
            await asyncio.sleep(0.8)  # some answered, some running, some waiting for a slot
            before = len(replies.messages)
            code = await asyncio.to_thread(hub.stop)
            assert code == 0
            assert 0 < before < 50, f"the test wants work in flight at SIGTERM (answered {before})"
            conn = await asyncpg.connect(db_dsn)
            try:
                pending = await conn.fetchval("SELECT count(*) FROM inbox WHERE state = 'pending'")
            finally:
                await conn.close()
            assert pending > 0, "unfinished requests stay in the inbox"
            await asyncio.to_thread(hub.start)
            got = await replies.wait_for(50, timeout=60)
            await asyncio.sleep(1.0)
            ids = [m.json()["id"] for m in replies.messages]
            assert sorted(set(ids)) == sorted(f"r{i}" for i in range(50))
            assert len(ids) == len(set(ids)) == 50, "no request answered twice"
            assert len(got) >= 50
        conn = await asyncpg.connect(db_dsn)
        try:
            events = await conn.fetchval("SELECT count(*) FROM events WHERE kind = 'slow.answered'")
        finally:
            await conn.close()
        assert events == 50
    finally:
        if hub.running:
            hub.kill()
