"""A tiny sd_notify client: readiness, status, watchdog and stopping messages for systemd (Type=notify).

No dependency. Every method is a no-op (returning False) when ``$NOTIFY_SOCKET`` is unset, so the same code
runs under systemd, in a terminal and in tests. Only the entry point should own a notifier (STYLE.md,
habit 7): build it with :meth:`SystemdNotifier.from_environ` and pass it on.

The watchdog ping is sent from a coroutine (:meth:`SystemdNotifier.watchdog_loop`) on the event loop
itself, so a blocked loop stops the pings and systemd restarts the service after ``WatchdogSec``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping, MutableMapping

import structlog

log = structlog.get_logger("kitt.sdnotify")

_ENV_NAMES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _socket_address(value: str) -> str | None:
    """``/run/systemd/notify`` as is; ``@name`` is the abstract namespace (a leading NUL byte)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


class SystemdNotifier:
    """Sends ``READY=1``, ``STATUS=…``, ``WATCHDOG=1``, ``STOPPING=1`` to the service manager.

    ``notify_socket`` is ``$NOTIFY_SOCKET`` (a path or ``@abstract``); ``watchdog_usec`` is
    ``$WATCHDOG_USEC`` (0: no watchdog). The constructor does no I/O.
    """

    def __init__(self, *, notify_socket: str = "", watchdog_usec: int = 0) -> None:
        self._address = _socket_address(notify_socket) if notify_socket else None
        if notify_socket and self._address is None:
            log.warning("sdnotify.unsupported_socket", notify_socket=notify_socket)
        self._watchdog_usec = max(0, watchdog_usec)

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = False
    ) -> SystemdNotifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (the watchdog is ours only
        when ``WATCHDOG_PID`` is absent or our pid). ``unset=True`` removes the three variables so child
        processes (the embedded PostgreSQL) do not inherit them."""
        env = os.environ if environ is None else environ
        notifier = cls(notify_socket=env.get("NOTIFY_SOCKET", ""), watchdog_usec=_watchdog_usec(env))
        if unset:
            for name in _ENV_NAMES:
                env.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, message: str) -> bool:
        """Send one datagram (newline-separated ``KEY=VALUE`` lines). False when disabled or not sent."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # never stall the event loop on a full receive queue
                sock.connect(self._address)
                sock.send(message.encode("utf-8"))
        except OSError as exc:
            log.warning("sdnotify.send_failed", message=message.split("\n", 1)[0], error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop (``EXTEND_TIMEOUT_USEC``), e.g. during a first initdb."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds (``WatchdogSec``), or None when there is no watchdog for us."""
        if self._address is None or self._watchdog_usec == 0:
            return None
        return self._watchdog_usec / 1_000_000

    async def watchdog_loop(self, is_healthy: Callable[[], bool]) -> None:
        """Ping ``WATCHDOG=1`` every interval/2 while ``is_healthy()``; returns at once without a watchdog.

        Run it as a named task owned by the kernel (``kitt[systemd].watchdog``); cancel it on exit.
        """
        interval = self.watchdog_interval()
        if interval is None:
            return
        period = interval / 2
        healthy = True
        while True:
            now_healthy = is_healthy()
            if now_healthy:
                self.watchdog()
            if now_healthy != healthy:
                healthy = now_healthy
                log.warning("sdnotify.watchdog_paused" if not healthy else "sdnotify.watchdog_resumed")
            await asyncio.sleep(period)


def _watchdog_usec(env: Mapping[str, str]) -> int:
    try:
        usec = int(env.get("WATCHDOG_USEC", "0") or "0")
        pid = env.get("WATCHDOG_PID")
        if pid is not None and pid.strip() and int(pid) != os.getpid():
            return 0
    except ValueError:
        log.warning("sdnotify.bad_watchdog_env", usec=env.get("WATCHDOG_USEC"), pid=env.get("WATCHDOG_PID"))
        return 0
    return usec


def _one_line(text: str) -> str:
    return " ".join(text.split())
