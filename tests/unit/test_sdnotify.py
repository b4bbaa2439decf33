"""sd_notify client against a real AF_UNIX datagram socket owned by the test."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.sdnotify import SystemdNotifier


class Receiver:
    """A datagram socket standing in for systemd; a thread timestamps every message as it arrives."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.RLock()
        self._arrived = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sdnotify-receiver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            with self._arrived:
                self.messages.append((time.monotonic(), data.decode()))
                self._arrived.notify_all()

    def received(self) -> list[str]:
        with self._lock:
            return [m for _, m in self.messages]

    def pings(self) -> list[float]:
        with self._lock:
            return [t for t, m in self.messages if m == "WATCHDOG=1"]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[str]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.messages) >= count, timeout)
        return self.received()

    def wait_for_pings(self, count: int, timeout: float = 5.0) -> list[float]:
        """Blocking: call it through ``asyncio.to_thread`` so the event loop keeps turning meanwhile."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.pings()) >= count, timeout)
        return self.pings()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def socket_path() -> Iterator[str]:
    # A short folder: sun_path holds 108 bytes and pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sdn", dir="/tmp") as d:
        yield str(Path(d) / "notify")


@pytest.fixture
def receiver(socket_path: str) -> Iterator[Receiver]:
    r = Receiver(socket_path)
    yield r
    r.close()


def test_ready_status_stopping_reach_the_socket(receiver: Receiver) -> None:
    n = SystemdNotifier(notify_socket=receiver.address)
    assert n.enabled
    assert n.status("store: connecting")
    assert n.ready()
    assert n.status("ready: spine subscribed\nstore ok")  # newlines would start a new KEY=VALUE
    assert n.stopping("draining 3 in-flight")
    assert n.extend_timeout(1.5)
    assert receiver.wait_for(5) == [
        "STATUS=store: connecting",
        "READY=1",
        "STATUS=ready: spine subscribed store ok",
        "STOPPING=1\nSTATUS=draining 3 in-flight",
        "EXTEND_TIMEOUT_USEC=1500000",
    ]


def test_abstract_socket_name() -> None:
    address = f"@kitt-test-{uuid.uuid4().hex}"
    r = Receiver(address)
    try:
        n = SystemdNotifier(notify_socket=address)
        assert n.ready("up")
        assert r.wait_for(1) == ["READY=1\nSTATUS=up"]
    finally:
        r.close()


def test_unset_socket_is_a_no_op() -> None:
    n = SystemdNotifier.from_environ({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.watchdog_interval() is None


def test_unsupported_socket_kind_is_disabled() -> None:
    assert not SystemdNotifier(notify_socket="vsock:2:1234").enabled


def test_missing_listener_returns_false_instead_of_raising(socket_path: str) -> None:
    assert SystemdNotifier(notify_socket=socket_path).ready() is False


def test_watchdog_interval_from_environ(socket_path: str) -> None:
    env = {"NOTIFY_SOCKET": socket_path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier.from_environ(env).watchdog_interval() == 30.0
    env["WATCHDOG_PID"] = str(os.getpid() + 1)  # the watchdog belongs to another process
    assert SystemdNotifier.from_environ(env).watchdog_interval() is None
    del env["WATCHDOG_PID"]
    assert SystemdNotifier.from_environ(env).watchdog_interval() == 30.0
    env["WATCHDOG_USEC"] = "soon"
    assert SystemdNotifier.from_environ(env).watchdog_interval() is None


def test_from_environ_can_unset_for_children(socket_path: str) -> None:
    env = {"NOTIFY_SOCKET": socket_path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1", "PATH": "/bin"}
    n = SystemdNotifier.from_environ(env, unset=True)
    assert n.enabled
    assert env == {"PATH": "/bin"}


async def test_watchdog_loop_without_watchdog_returns_at_once(receiver: Receiver) -> None:
    n = SystemdNotifier(notify_socket=receiver.address)  # no WATCHDOG_USEC
    await asyncio.wait_for(n.watchdog_loop(lambda: True), timeout=1)
    assert receiver.received() == []


def block_event_loop(seconds: float) -> None:
    """What a stuck handler does: hold the event loop without yielding."""
    time.sleep(seconds)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _run_loop(n: SystemdNotifier, healthy: list[bool]) -> asyncio.Task[None]:
    return asyncio.create_task(n.watchdog_loop(lambda: healthy[0]), name="kitt[systemd].watchdog")


async def test_watchdog_pings_repeatedly(receiver: Receiver) -> None:
    n = SystemdNotifier(notify_socket=receiver.address, watchdog_usec=100_000)  # ping every 50 ms
    task = _run_loop(n, [True])
    try:
        assert len(await asyncio.to_thread(receiver.wait_for_pings, 4)) >= 4
    finally:
        await _stop(task)
    assert set(receiver.received()) == {"WATCHDOG=1"}


async def test_unhealthy_stops_the_pings_and_recovery_resumes_them(receiver: Receiver) -> None:
    n = SystemdNotifier(notify_socket=receiver.address, watchdog_usec=100_000)
    healthy = [False]
    task = _run_loop(n, healthy)
    try:
        await asyncio.sleep(0.3)  # six periods
        assert receiver.pings() == []
        healthy[0] = True
        assert await asyncio.to_thread(receiver.wait_for_pings, 1)
    finally:
        await _stop(task)


async def test_blocked_event_loop_leaves_a_gap_in_the_pings(receiver: Receiver) -> None:
    interval = 0.2  # WatchdogSec; pings every 0.1 s
    n = SystemdNotifier(notify_socket=receiver.address, watchdog_usec=int(interval * 1_000_000))
    task = _run_loop(n, [True])
    try:
        assert len(await asyncio.to_thread(receiver.wait_for_pings, 3)) >= 3
        start = time.monotonic()
        block_event_loop(3 * interval)  # no coroutine can run meanwhile
        end = time.monotonic()
        block_event_loop(0.05)  # let the receiver thread read anything sent during the block
        # A ping sent just before the block arrives within microseconds of `start`, hence the 50 ms.
        assert [t for t in receiver.pings() if start + 0.05 < t <= end] == []
        seen = len(receiver.pings())
        assert len(await asyncio.to_thread(receiver.wait_for_pings, seen + 3)) >= seen + 3
    finally:
        await _stop(task)
    pings = receiver.pings()
    gap, (a, b) = max((b - a, (a, b)) for a, b in itertools.pairwise(pings))
    # The longest silence is the block, 3× the watchdog interval, against 0.5× between normal pings. The
    # margin is wide on purpose: a loaded machine may delay the normal pings too.
    assert a <= start + 0.05 and b > end
    assert gap >= 2 * interval
