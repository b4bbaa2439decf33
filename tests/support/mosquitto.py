"""A private Mosquitto for one test (or module): its own port, its own persistence folder, start/stop/restart.

Debian's Mosquitto is 2.0.11 at /usr/sbin/mosquitto. As root it drops to the ``mosquitto`` user unless the
config says ``user root`` (which could not write the tmp folder), so the config names the current user.
Persistence is on, as in production (``systemd/mosquitto-kitt.conf``), so a restart keeps durable sessions and
queued QoS 1/2 messages. ``stop()`` is SIGTERM, after which Mosquitto writes its database; ``kill()`` is SIGKILL
(whatever the last autosave did not write is lost, exactly as the reference notes warn).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.support.config import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class MosquittoError(RuntimeError):
    pass


class Mosquitto:
    """``with Mosquitto() as broker: broker.port`` — or ``start()``/``stop()``/``restart()`` by hand."""

    def __init__(
        self,
        *,
        port: int | None = None,
        workdir: Path | None = None,
        autosave_on_changes: bool = False,
        autosave_interval: int = 1800,
        max_inflight_messages: int = 64,
        max_queued_messages: int = 20000,
        set_tcp_nodelay: bool = True,
        extra: str = "",
    ) -> None:
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kitt-mosquitto-"))
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self._settings = {
            "autosave_on_changes": autosave_on_changes,
            "autosave_interval": autosave_interval,
            "max_inflight_messages": max_inflight_messages,
            "max_queued_messages": max_queued_messages,
            "set_tcp_nodelay": set_tcp_nodelay,
        }
        self._extra = extra
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _write_config(self) -> None:
        s = self._settings
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f"""# written by tests/support/mosquitto.py
user {getpass.getuser()}
listener {self.port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {self.workdir / 'data'}/
autosave_on_changes {'true' if s['autosave_on_changes'] else 'false'}
autosave_interval {s['autosave_interval']}
max_queued_messages {s['max_queued_messages']}
max_queued_bytes 0
max_inflight_messages {s['max_inflight_messages']}
persistent_client_expiration 1d
set_tcp_nodelay {'true' if s['set_tcp_nodelay'] else 'false'}
log_dest stdout
log_type error
log_type warning
log_type notice
{self._extra}
"""
        )

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._write_config()
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config_path)], stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MosquittoError(f"mosquitto exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise MosquittoError(f"mosquitto did not listen on {self.port}: {self.log_tail()}")

    def _end(self, sig: int, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Mosquitto saves its persistence database and exits."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: no final save."""
        self._end(signal.SIGKILL, 5.0)

    def restart(self, *, hard: bool = False, down_s: float = 0.0) -> None:
        self.kill() if hard else self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def mosquitto_available() -> bool:
    return os.path.exists(MOSQUITTO)
