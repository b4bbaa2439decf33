"""Run the hub as a real process (``python -m hub.cli run --config FILE``): wait for /readyz, kill, restart.

The config is written as TOML from ``tests.support.config.make_config_dict`` by the small dumper below
(``tomllib`` only reads; the dumper covers what configs hold: tables, strings, numbers, booleans, arrays).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.config import REPO

# --- a tiny TOML writer ----------------------------------------------------------------------------------


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "-_" for c in key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dumps_toml(data: dict[str, Any]) -> str:
    """Scalars first, then one ``[table]`` per nested dict (recursively, with dotted names)."""
    lines: list[str] = []

    def table(prefix: str, node: dict[str, Any]) -> None:
        scalars = {k: v for k, v in node.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in node.items() if isinstance(v, dict)}
        if prefix and (scalars or not tables):
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        if scalars or prefix:
            lines.append("")
        for k, v in tables.items():
            table(f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k), v)

    table("", data)
    return "\n".join(lines)


# --- the hub process --------------------------------------------------------------------------------------


class HubProcessError(RuntimeError):
    pass


class HubProcess:
    """One hub process per ``start()``; ``kill()`` (SIGKILL) / ``stop()`` (SIGTERM) / ``restart()``."""

    def __init__(self, config: dict[str, Any], workdir: Path, *, name: str = "hub") -> None:
        self.config = config
        self.workdir = workdir
        self.name = name
        self.config_path = workdir / f"{name}.toml"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        host, _, port = config["web"]["listen"].rpartition(":")
        self.base_url = f"http://{host}:{port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, wait_ready: bool = True, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(dumps_toml(self.config))
        log = self.log_path.open("ab")
        log.write(f"\n===== start {self.starts} =====\n".encode())
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("KITT_CONFIG", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "run", "--config", str(self.config_path)],
                                     cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()
        self.starts += 1
        if wait_ready:
            self.wait_ready(timeout)

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise HubProcessError(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, body = self.get("/readyz")
                if status == 200:
                    return
                last = body.decode(errors="replace")
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.05)
        raise HubProcessError(f"hub not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def metrics(self) -> dict[str, float]:
        """The Prometheus text as {'name{labels}': value}."""
        _status, body = self.get("/metrics")
        out: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def rss_bytes(self) -> int:
        """Resident memory of the hub process (from /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise HubProcessError("no VmRSS")

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye; the LWT fires and the broker keeps the session."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM: graceful drain; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise HubProcessError(f"hub did not stop on SIGTERM within {timeout}s:\n{self.log_tail()}") from None
        return self.proc.returncode

    def restart(self, *, hard: bool = True, wait_ready: bool = True) -> None:
        self.kill() if hard else self.stop()
        self.start(wait_ready=wait_ready)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> HubProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.running:
            try:
                self.stop(timeout=15)
            except HubProcessError as err:
                # Already killed by stop(); report it without hiding the test's own failure, if any.
                print(f"{self.name}: {err}", file=sys.stderr)


# --- what the database says happened -------------------------------------------------------------------


async def event_counts(dsn: str, kind: str) -> dict[str, int]:
    """``{correlation_id: number of audit events of that kind}``."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT correlation_id, count(*) AS n FROM events WHERE kind = $1 GROUP BY 1", kind)
    finally:
        await conn.close()
    return {r["correlation_id"]: r["n"] for r in rows}


async def db_value(dsn: str, query: str, *args: Any) -> Any:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()
