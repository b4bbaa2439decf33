"""Fault injection for durable jobs: real processes, real signals, a real PostgreSQL (and a throwaway cluster).

Each hub instance is a separate process running ``JobService`` (the script below). Routines write what they do
into a ``probe`` table, so the tests judge "exactly once" from the effects, not from the runner's bookkeeping.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hub.metrics import Metrics
from hub.store import Store
from tests.support.db import create_database, drop_database, temp_database_sync

pytestmark = pytest.mark.fault

WORKER_SCRIPT = r'''
import asyncio, json, signal, sys
from pathlib import Path

from hub.config import JobSection
from hub.jobs import JobService
from hub.metrics import Metrics
from hub.store import Store

cfg = json.loads(Path(sys.argv[1]).read_text())
PROBE = """INSERT INTO probe (kind, job, nominal_at, run_id, attempt, token, instance, i)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"""


async def write(ctx, kind, i=0):
    async with ctx.fenced() as conn:
        await conn.execute(PROBE, kind, ctx.job, ctx.nominal_at, ctx.run_id, ctx.attempt, ctx.token,
                           cfg["instance"], i)


async def probe(ctx):  # one effect per run
    await asyncio.sleep(cfg.get("probe_sleep_s", 0))
    await write(ctx, "done")


async def slow(ctx):  # marks its start, works a while, then its effect
    await write(ctx, "start")
    await asyncio.sleep(cfg.get("slow_sleep_s", 0))
    await write(ctx, "done")


async def fence(ctx):  # a long singleton writing at a steady pace
    for i in range(cfg.get("iterations", 100)):
        await write(ctx, "write", i)
        await asyncio.sleep(0.2)


async def main():
    known = {"probe": probe, "slow": slow, "fence": fence}
    routines = {job: known[cfg.get("routines", {}).get(job, cfg.get("routine", "probe"))] for job in cfg["jobs"]}
    store = Store(dsn=cfg["dsn"], metrics=Metrics(), pool_min=1, pool_max=10, apply_migrations=False)
    await store.start()
    svc = JobService(
        store=store, metrics=Metrics(), jobs={k: JobSection(**v) for k, v in cfg["jobs"].items()},
        instance_id=cfg["instance"], publish=lambda t, p: asyncio.sleep(0), health_probe=dict,
        routines=routines, **cfg.get("service", {}),
    )
    await svc.start()
    Path(cfg["ready_file"]).write_text("ready")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await svc.stop()
    await store.stop()


asyncio.run(main())
'''

PROBE_DDL = """CREATE TABLE IF NOT EXISTS probe (
    id bigserial PRIMARY KEY, kind text NOT NULL, job text NOT NULL, nominal_at timestamptz, run_id bigint,
    attempt int, token bigint, instance text, i int, at timestamptz NOT NULL DEFAULT clock_timestamp())"""


class Worker:
    """One hub instance in its own process."""

    def __init__(self, tmp: Path, dsn: str, instance: str, **cfg: Any) -> None:
        self.instance = instance
        self.ready = tmp / f"{instance}.ready"
        self.ready.unlink(missing_ok=True)
        script = tmp / "job_worker.py"
        script.write_text(WORKER_SCRIPT)
        conf = tmp / f"{instance}.json"
        conf.write_text(json.dumps({"dsn": dsn, "instance": instance, "ready_file": str(self.ready), **cfg}))
        self.log = (tmp / f"{instance}.log").open("w")
        self.proc = subprocess.Popen([sys.executable, str(script), str(conf)], stdout=self.log, stderr=self.log,
                                     cwd=tmp)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            assert self.proc.poll() is None, f"worker {self.instance} exited early: see its log"
            assert time.monotonic() < deadline, f"worker {self.instance} did not start"
            time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        """Stop gracefully (SIGTERM); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def dead_loops(self) -> list[str]:
        return [line for line in Path(self.log.name).read_text().splitlines() if "job loop died" in line]


@contextmanager
def workers(*ws: Worker) -> Iterator[tuple[Worker, ...]]:
    try:
        for w in ws:
            w.wait_ready()
        yield ws
    finally:
        for w in ws:
            w.stop()
    # A job loop that died is a failure even when the other instances carried the work.
    assert [line for w in ws for line in w.dead_loops()] == []


def migrate(dsn: str) -> None:
    async def go() -> None:
        store = Store(dsn=dsn, metrics=Metrics(), pool_min=1, pool_max=2)
        await store.start()
        await store.write(PROBE_DDL)
        await store.stop()

    asyncio.run(go())


def query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def value(dsn: str, sql: str, *args: Any) -> Any:
    rows = query(dsn, sql, *args)
    return rows[0][0] if rows else None


def wait_for(check: Callable[[], Any], timeout: float = 40, what: str = "condition") -> Any:
    """Poll until ``check()`` is truthy (waiting, not asserting speed)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def assert_every_tick_ran_exactly_once(dsn: str, jobs: list[str], interval: timedelta) -> int:
    """No tick lost (no gap in nominal times), none doubled (one effect per tick). Returns the ticks checked."""
    checked = 0
    for job in jobs:
        runs = query(dsn, "SELECT nominal_at, status FROM job_runs WHERE job = $1 AND nominal_at IS NOT NULL "
                          "ORDER BY nominal_at", job)
        nominal = [r["nominal_at"] for r in runs]
        assert nominal, f"{job} never ran"
        gaps = [(a, b) for a, b in itertools.pairwise(nominal) if b - a != interval]
        assert gaps == [], f"{job}: ticks lost between {gaps[:3]}"
        assert {r["status"] for r in runs} <= {"succeeded", "scheduled", "running", "failed"}
        effects = query(dsn, "SELECT nominal_at, count(*) AS n FROM probe WHERE job = $1 AND kind = 'done' "
                             "GROUP BY nominal_at", job)
        doubled = [e["nominal_at"] for e in effects if e["n"] != 1]
        assert doubled == [], f"{job}: ticks executed more than once: {doubled[:3]}"
        succeeded = {r["nominal_at"] for r in runs if r["status"] == "succeeded"}
        assert succeeded == {e["nominal_at"] for e in effects}
        checked += len(succeeded)
    return checked


@pytest.fixture
def dsn() -> Iterator[str]:
    with temp_database_sync(prefix="kitt_test_fault") as url:
        migrate(url)
        yield url


# --- 1. SIGKILL mid-run ------------------------------------------------------------------------------------


def test_schedules_and_pending_runs_survive_sigkill(dsn: str, tmp_path: Path) -> None:
    cfg = dict(
        routines={"slow": "slow", "tick": "probe"}, slow_sleep_s=4,
        jobs={"slow": {"schedule": "0 0 1 1 *", "max_attempts": 3, "timeout_s": 30},
              "tick": {"schedule": "every 1s", "misfire": "all", "catch_up_cap": 100}},
        service={"lease_ttl_s": 2, "reap_interval_s": 0.3, "retry_base_s": 0.2, "poll_interval_s": 0.1},
    )
    add_run = "INSERT INTO job_runs (job, trigger) VALUES ('slow', 'manual') RETURNING id"
    a = Worker(tmp_path, dsn, "A", **cfg)
    with workers(a):
        first = value(dsn, add_run)
        second = value(dsn, add_run)  # queued behind the first: one run of a job at a time
        wait_for(lambda: value(dsn, "SELECT count(*) FROM probe WHERE kind = 'start' AND run_id = $1", first),
                 what="the first run to start")
        a.signal(signal.SIGKILL)
        a.proc.wait()
    # Nothing was lost with the process: both runs and the schedules are in the database.
    runs = {r["id"]: r for r in query(dsn, "SELECT id, status, lease_owner FROM job_runs WHERE job = 'slow'")}
    assert (runs[first]["status"], runs[first]["lease_owner"]) == ("running", "A")
    assert runs[second]["status"] == "scheduled"
    assert value(dsn, "SELECT count(*) FROM schedules") == 2
    ticks_before = value(dsn, "SELECT count(*) FROM job_runs WHERE job = 'tick'")

    b = Worker(tmp_path, dsn, "B", **cfg)
    with workers(b):
        wait_for(lambda: value(dsn, "SELECT count(*) = 2 FROM job_runs WHERE job = 'slow' AND status = 'succeeded'"),
                 what="both runs to succeed")
        wait_for(lambda: value(dsn, "SELECT count(*) > $1 + 3 FROM job_runs WHERE job = 'tick' "
                                    "AND status = 'succeeded'", ticks_before), what="the schedule to keep ticking")
    killed = query(dsn, "SELECT attempts, errors, lease_owner FROM job_runs WHERE id = $1", first)[0]
    assert killed["attempts"] == 2 and killed["lease_owner"] == "B"
    assert [(e["kind"], e["owner"]) for e in killed["errors"]] == [("lease_expired", "A")]
    effects = query(dsn, "SELECT kind, instance, attempt FROM probe WHERE run_id = $1 ORDER BY id", first)
    assert [tuple(e) for e in effects] == [("start", "A", 1), ("start", "B", 2), ("done", "B", 2)]
    assert value(dsn, "SELECT attempts FROM job_runs WHERE id = $1", second) == 1
    assert_every_tick_ran_exactly_once(dsn, ["tick"], timedelta(seconds=1))


# --- 2. three instances, 200+ ticks ------------------------------------------------------------------------


def test_three_instances_run_every_tick_exactly_once(dsn: str, tmp_path: Path) -> None:
    jobs = {f"t{i}": {"schedule": "every 1s", "misfire": "all", "catch_up_cap": 100} for i in range(10)}
    cfg = dict(routine="probe", probe_sleep_s=0.1, jobs=jobs,
               service={"lease_ttl_s": 5, "reap_interval_s": 1, "poll_interval_s": 0.2, "max_concurrent_runs": 4})
    ws = [Worker(tmp_path, dsn, name, **cfg) for name in ("A", "B", "C")]
    with workers(*ws):
        wait_for(lambda: value(dsn, "SELECT count(*) >= 230 FROM job_runs WHERE status = 'succeeded'"),
                 timeout=50, what="230 ticks")
    assert all(w.proc.returncode == 0 for w in ws)  # stopped gracefully
    checked = assert_every_tick_ran_exactly_once(dsn, list(jobs), timedelta(seconds=1))
    assert checked >= 200
    # The database spread the work: with 10 runs due each second and 4 slots each, nobody ran them all.
    per_instance = dict(query(dsn, "SELECT instance, count(*) FROM probe GROUP BY instance"))
    assert len(per_instance) >= 2, per_instance
    assert value(dsn, "SELECT count(*) FROM job_runs WHERE status = 'dead'") == 0


# --- 3. a paused leader is fenced out ----------------------------------------------------------------------


def test_a_paused_leader_loses_its_lease_and_its_late_write_is_refused(dsn: str, tmp_path: Path) -> None:
    cfg = dict(routine="fence", iterations=60,
               jobs={"leader": {"schedule": "0 0 1 1 *", "max_attempts": 5, "timeout_s": 40}},
               service={"lease_ttl_s": 1.5, "reap_interval_s": 0.2, "retry_base_s": 0.1, "poll_interval_s": 0.1,
                        "shutdown_grace_s": 0.5})
    ws = {name: Worker(tmp_path, dsn, name, **cfg) for name in ("A", "B")}
    with workers(*ws.values()):
        value(dsn, "INSERT INTO job_runs (job, trigger, max_attempts, timeout_s) "
                   "VALUES ('leader', 'manual', 5, 40) RETURNING id")
        first = wait_for(lambda: query(dsn, "SELECT instance, token FROM probe ORDER BY id LIMIT 1"),
                         what="the leader's first write")[0]
        old, old_token = ws[first["instance"]], first["token"]
        new = ws["B" if old.instance == "A" else "A"]
        old.signal(signal.SIGSTOP)
        # The new holder takes over with a higher token and works.
        taken = wait_for(lambda: query(dsn, "SELECT token FROM probe WHERE instance = $1 LIMIT 1", new.instance),
                         what="the takeover")[0]
        assert taken["token"] > old_token
        stopped_at = value(dsn, "SELECT max(id) FROM probe WHERE instance = $1", old.instance)
        old.signal(signal.SIGCONT)
        refused = wait_for(lambda: query(dsn, "SELECT actor, body FROM events WHERE kind = 'job.write_refused'"),
                           what="the refused late write")[0]
    assert refused["actor"] == old.instance
    assert refused["body"]["token"] == old_token
    assert "no longer current" in refused["body"]["error"] or "no longer held" in refused["body"]["error"]
    # Not one write with the old term landed after the pause (the old holder may legitimately take the job
    # again later, with a newer token, e.g. when the other instance shuts down).
    assert value(dsn, "SELECT count(*) FROM probe WHERE token = $1 AND id > $2", old_token, stopped_at) == 0
    tokens = [r["token"] for r in query(dsn, "SELECT token FROM probe ORDER BY id")]
    assert tokens == sorted(tokens)  # the fence keeps the effects in term order
    leases = query(dsn, "SELECT token FROM leases WHERE name = 'job:leader'")
    assert leases[0]["token"] >= taken["token"]


# --- 4. PostgreSQL restart mid-cycle (a throwaway cluster) -------------------------------------------------

PG_BIN = next((p for p in (Path("/usr/lib/postgresql/15/bin"), Path("/usr/local/bin")) if (p / "initdb").exists()),
              None)
PG_USER = "kitt-pgtest"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A private PostgreSQL cluster run as an unprivileged user (initdb refuses root)."""

    def __init__(self, root: Path) -> None:
        assert PG_BIN is not None
        self.root, self.data, self.port = root, root / "data", _free_port()
        self.admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_user(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(PG_USER)
            except KeyError:
                subprocess.run(["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", PG_USER], check=True)
            shutil.chown(self.root, PG_USER)
        self._as_user(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_user(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "pg.log"),
                      "-w", "start")

    def stop(self) -> None:
        self._as_user(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if PG_BIN is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        pytest.skip("needs PostgreSQL server binaries (initdb, pg_ctl) and runuser")
    root = Path(tempfile.mkdtemp(prefix="kitt-pgtest-"))
    root.chmod(0o755)
    c = Cluster(root)
    c.init()
    c.start()
    try:
        yield c
    finally:
        try:
            c.stop()
        except subprocess.CalledProcessError as exc:  # already stopped by the test: report, then clean up
            print(f"cluster stop: {exc.stderr.decode(errors='replace')}")
        shutil.rmtree(root, ignore_errors=True)


def _run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_postgres_restart_mid_cycle_loses_and_doubles_nothing(cluster: Cluster, tmp_path: Path) -> None:
    dsn = _run(create_database(cluster.admin, prefix="kitt_test_restart"))
    migrate(dsn)
    jobs = {f"r{i}": {"schedule": "every 1s", "misfire": "all", "catch_up_cap": 100, "max_attempts": 10}
            for i in range(5)}
    cfg = dict(routine="probe", probe_sleep_s=0.8, jobs=jobs,
               service={"lease_ttl_s": 15, "reap_interval_s": 1, "poll_interval_s": 0.2, "retry_base_s": 0.2,
                        "max_concurrent_runs": 5})
    ws = [Worker(tmp_path, dsn, name, **cfg) for name in ("A", "B")]
    with workers(*ws):
        wait_for(lambda: value(dsn, "SELECT count(*) >= 20 FROM job_runs WHERE status = 'succeeded'"),
                 what="runs before the restart")
        # Stop the server under runs in flight (each takes 0.8 s, five are due every second).
        in_flight = wait_for(lambda: [r["id"] for r in query(dsn, "SELECT id FROM job_runs WHERE status = 'running'")],
                             what="runs in flight")
        cluster.stop()
        time.sleep(2)
        assert all(w.proc.poll() is None for w in ws), "a hub process exited during the outage"
        cluster.start()
        before = value(dsn, "SELECT count(*) FROM job_runs WHERE status = 'succeeded'")
        wait_for(lambda: value(dsn, "SELECT count(*) >= $1 + 40 FROM job_runs WHERE status = 'succeeded'", before),
                 what="runs to resume")
        assert all(w.proc.poll() is None for w in ws)
    checked = assert_every_tick_ran_exactly_once(dsn, list(jobs), timedelta(seconds=1))
    assert checked >= 60
    # The runs cut off by the restart finished, each with exactly one effect.
    cut = query(dsn, "SELECT r.status, r.attempts, (SELECT count(*) FROM probe p WHERE p.run_id = r.id) AS effects "
                     "FROM job_runs r WHERE r.id = ANY($1::bigint[])", in_flight)
    assert [(c["status"], c["effects"]) for c in cut] == [("succeeded", 1)] * len(in_flight)
    assert value(dsn, "SELECT count(*) FROM job_runs WHERE status = 'dead'") == 0
    print(f"ticks checked: {checked}; in flight at the stop: {len(in_flight)}, "
          f"attempts they needed: {[c['attempts'] for c in cut]}")
    _run(drop_database(dsn, cluster.admin))
