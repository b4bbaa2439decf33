"""Spine throughput: QoS 2 requests through the hub (``kitt/<hub>/ask`` → inbox commit → handler transaction
with outbox row + audit event → relay → QoS 2 reply), beside a raw gmqtt request/reply echo pair on the same
broker in the same run.

Both sides get the same requester, broker, payloads and concurrency; both responders are separate processes
(the hub as ``python -m hub.cli run``, the echo as a bare gmqtt client). Measured:
- throughput: closed loops with ``CONCURRENCY`` requests outstanding, replies counted over a fixed window,
  in rounds that alternate between the two sides (so both see the same background load); medians reported;
- latency: an open loop at a fixed rate below both capacities (P50/P99 without queueing in the requester);
- CPU per request of each responder process (and of the hub's PostgreSQL backends), which does not depend
  on how busy the rest of the machine is, unlike throughput.

Needs Mosquitto (``/usr/sbin/mosquitto``) and the PostgreSQL at ``$KITT_TEST_PG`` (default 127.0.0.1:5432).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

from bench.harness import percentile, print_table

TARGET_MSG_S = 2000.0
TARGET_RATIO = 0.40
CONCURRENCY = 256
LATENCY_RATE_MSG_S = 500.0


def _loop_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


# --- the raw echo responder (run in its own process) -----------------------------------------------------


def responder_main(port: int, topic: str) -> None:
    """A bare gmqtt client: QoS 2 in (gmqtt acknowledges at once), QoS 2 reply to the Response Topic."""
    from tests.support.mqtt import TestClient

    class Echo(TestClient):
        pending: ClassVar[set[asyncio.Task[None]]] = set()  # one echo per process

        def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> int:
            task = asyncio.ensure_future(self._reply(payload, properties))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
            return 0

        async def _reply(self, payload: bytes, properties: dict[str, Any]) -> None:
            req = json.loads(payload)
            reply = json.dumps({"id": req["id"], "text": f"You said: {req['text']}", "route": "echo"})
            await self.publish(properties["response_topic"][0], reply, qos=2, wait=False,
                               correlation_data=properties["correlation_data"][0])

    async def main() -> None:
        async with Echo(port) as echo:
            await echo.collect(topic, qos=2)
            print("ready", flush=True)
            await asyncio.Event().wait()

    with _loop_runner() as runner:
        runner.run(main())


# --- the requester ---------------------------------------------------------------------------------------


class Requester:
    """Sends requests with a Response Topic and Correlation Data; records the latency of each reply."""

    def __init__(self, port: int, request_topic: str) -> None:
        from tests.support.mqtt import TestClient

        self._request_topic = request_topic
        self.reply_topic = f"bench/{uuid.uuid4().hex[:8]}/reply"
        self.sent: dict[bytes, float] = {}
        self.latencies: list[tuple[float, float]] = []  # (reply time, latency)
        self.duplicates = 0
        outer = self

        class _Client(TestClient):
            def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, props: dict[str, Any]) -> int:
                outer._on_reply(props)
                return 0

        self.client = _Client(port)
        self._slots: asyncio.Semaphore | None = None

    def _on_reply(self, props: dict[str, Any]) -> None:
        corr = (props.get("correlation_data") or [b""])[0]
        sent = self.sent.pop(corr, None)
        if sent is None:
            self.duplicates += 1
            return
        now = time.perf_counter()
        self.latencies.append((now, now - sent))
        if self._slots is not None:
            self._slots.release()

    async def __aenter__(self) -> Requester:
        await self.client.connect()
        await self.client.collect(self.reply_topic, qos=2)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.disconnect()

    async def _send_one(self) -> None:
        rid = uuid.uuid4().hex
        corr = rid.encode()
        self.sent[corr] = time.perf_counter()
        await self.client.publish(self._request_topic, {"id": rid, "text": "turn on the light", "site": "bench"},
                                  qos=2, wait=False, response_topic=self.reply_topic, correlation_data=corr)

    async def closed_loop(self, seconds: float, warmup_s: float) -> dict[str, float]:
        """``CONCURRENCY`` outstanding requests; throughput = replies in the window after warm-up."""
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self.latencies.clear()
        end = time.perf_counter() + warmup_s + seconds
        window_start = time.perf_counter() + warmup_s
        while time.perf_counter() < end:
            await self._slots.acquire()
            await self._send_one()
        await self._wait_outstanding(30)
        window = [lat for at, lat in self.latencies if window_start <= at <= end]
        self._slots = None
        return {"msg_s": round(len(window) / seconds, 1), "p50_ms": round(percentile(window, 50) * 1000, 2),
                "p99_ms": round(percentile(window, 99) * 1000, 2), "n": len(window)}

    async def open_loop(self, rate: float, seconds: float) -> dict[str, float]:
        """Requests at a fixed rate; latency of each (no requester-side queueing)."""
        self.latencies.clear()
        count = int(rate * seconds)
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._send_one()
        await self._wait_outstanding(30)
        lats = [lat for _, lat in self.latencies]
        return {"rate_msg_s": rate, "p50_ms": round(percentile(lats, 50) * 1000, 2),
                "p99_ms": round(percentile(lats, 99) * 1000, 2), "n": len(lats)}

    async def _wait_outstanding(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.sent and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.sent:
            raise RuntimeError(f"{len(self.sent)} requests got no reply within {timeout}s")


# --- the run ---------------------------------------------------------------------------------------------


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of processes, from /proc (a process that is gone counts 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


async def _pg_backends(dsn: str) -> list[int]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
    finally:
        await conn.close()


async def _steady_state(req: Requester, dsn: str) -> None:
    """Bring the hub's fresh database to where a running hub's is: a few thousand rows, seen by autovacuum.

    On a database created seconds ago nothing has analyzed the queue tables yet (autovacuum looks once a
    minute), so the generic plans PostgreSQL caches after a statement's fifth run keep the sizes of an empty
    table: a sequential scan of the outbox per batch, slower with every row. A running hub's tables are
    vacuumed and analyzed every minute (migration 0080); this does once what that does.
    """
    import asyncpg

    await req.closed_loop(2.0, 0.0)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM (ANALYZE) inbox, outbox, events")
    finally:
        await conn.close()


class Side:
    """One responder (the hub, or the raw echo) and what its rounds measured."""

    def __init__(self, name: str, topic: str, pids: list[int], dsn: str | None = None) -> None:
        self.name = name
        self.topic = topic
        self.pids = pids
        self.dsn = dsn
        self.rounds: list[dict[str, float]] = []
        self.cpu_ms: dict[str, list[float]] = {"responder": [], "database": []}

    async def round(self, req: Requester, seconds: float, warmup_s: float) -> None:
        db_pids = set(await _pg_backends(self.dsn)) if self.dsn else set()
        before = (_cpu_seconds(self.pids), _cpu_seconds(list(db_pids)))
        result = await req.closed_loop(seconds, warmup_s)
        if self.dsn:  # a backend the pool opened meanwhile counts from its start
            db_pids |= set(await _pg_backends(self.dsn))
        after = (_cpu_seconds(self.pids), _cpu_seconds(list(db_pids)))
        handled = max(1, len(req.latencies))
        self.rounds.append(result)
        self.cpu_ms["responder"].append(round((after[0] - before[0]) / handled * 1000, 3))
        if self.dsn:
            self.cpu_ms["database"].append(round((after[1] - before[1]) / handled * 1000, 3))

    def median(self, key: str) -> float:
        return round(statistics.median(r[key] for r in self.rounds), 2)


async def _start_echo(port: int, topic: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", f"from bench.spine import responder_main; responder_main({port}, {topic!r})",
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    if (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() != b"ready":
        raise RuntimeError("echo responder did not start")
    return proc


async def _run_async(quick: bool) -> dict[str, Any]:
    from tests.support.config import make_config_dict
    from tests.support.db import temporary_database
    from tests.support.hubproc import HubProcess
    from tests.support.mosquitto import Mosquitto

    rounds, seconds, warmup_s, latency_s = (2, 2.0, 0.5, 2.0) if quick else (4, 5.0, 1.0, 5.0)
    work = Path(tempfile.mkdtemp(prefix="kitt-bench-spine-"))
    load_before = os.getloadavg()
    with Mosquitto(workdir=work / "broker") as broker:
        raw_topic = f"bench/{uuid.uuid4().hex[:8]}/req"
        echo = await _start_echo(broker.port, raw_topic)
        try:
            async with temporary_database("kitt_bench") as dsn:
                cfg = make_config_dict(dsn=dsn, state_dir=work / "state", mqtt_port=broker.port,
                                       plugins=("handlers.ask",), database={"pool_min": 4, "pool_max": 16})
                hub = HubProcess(cfg, work, name="hub")
                await asyncio.to_thread(hub.start)
                try:
                    raw = Side("raw", raw_topic, [echo.pid])
                    through_hub = Side("hub", f"kitt/{cfg['hub']['id']}/ask", [hub.pid], dsn)
                    broker_cpu = _cpu_seconds([broker.pid or 0])
                    # Rounds alternate, so both sides see the same background load of the machine.
                    async with Requester(broker.port, raw.topic) as raw_req, \
                            Requester(broker.port, through_hub.topic) as hub_req:
                        await raw_req.open_loop(200, 0.5)
                        await hub_req.open_loop(200, 0.5)
                        await _steady_state(hub_req, dsn)
                        for _ in range(rounds):
                            await raw.round(raw_req, seconds, warmup_s)
                            await through_hub.round(hub_req, seconds, warmup_s)
                        raw_latency = await raw_req.open_loop(LATENCY_RATE_MSG_S, latency_s)
                        hub_latency = await hub_req.open_loop(LATENCY_RATE_MSG_S, latency_s)
                        duplicates = hub_req.duplicates
                    broker_cpu = _cpu_seconds([broker.pid or 0]) - broker_cpu
                finally:
                    await asyncio.to_thread(hub.stop)
        finally:
            echo.terminate()
            await echo.wait()
    return {"raw": raw, "hub": through_hub, "raw_latency": raw_latency, "hub_latency": hub_latency,
            "duplicates": duplicates, "rounds": rounds, "seconds": seconds, "broker_cpu_s": broker_cpu,
            "loadavg": {"before": load_before[0], "after": os.getloadavg()[0]}}


def run(quick: bool) -> dict[str, Any]:
    with _loop_runner() as runner:
        r = runner.run(_run_async(quick))
    hub, raw = r["hub"], r["raw"]
    hub_msg_s, raw_msg_s = hub.median("msg_s"), raw.median("msg_s")
    ratio = hub_msg_s / raw_msg_s if raw_msg_s else 0.0
    hub_cpu = statistics.median(hub.cpu_ms["responder"])
    db_cpu = statistics.median(hub.cpu_ms["database"])
    echo_cpu = statistics.median(raw.cpu_ms["responder"])
    figures = {
        "hub_msg_s": hub_msg_s,
        "hub_msg_s_rounds": [x["msg_s"] for x in hub.rounds],
        "hub_loaded_p50_ms": hub.median("p50_ms"),
        "hub_loaded_p99_ms": hub.median("p99_ms"),
        "hub_p50_ms_at_rate": r["hub_latency"]["p50_ms"],
        "hub_p99_ms_at_rate": r["hub_latency"]["p99_ms"],
        "hub_cpu_ms_per_request": hub_cpu,
        "postgres_cpu_ms_per_request": db_cpu,
        "latency_rate_msg_s": LATENCY_RATE_MSG_S,
        "concurrency": CONCURRENCY,
        "raw_duplicate_replies_hub": r["duplicates"],
        "machine_loadavg_1m": r["loadavg"],
        "cpus": os.cpu_count(),
    }
    baseline = {
        "raw_pair_msg_s": raw_msg_s,
        "raw_pair_msg_s_rounds": [x["msg_s"] for x in raw.rounds],
        "raw_loaded_p50_ms": raw.median("p50_ms"),
        "raw_loaded_p99_ms": raw.median("p99_ms"),
        "raw_p50_ms_at_rate": r["raw_latency"]["p50_ms"],
        "raw_p99_ms_at_rate": r["raw_latency"]["p99_ms"],
        "echo_cpu_ms_per_request": echo_cpu,
    }
    result = {
        "figures": figures,
        "baseline": baseline,
        "ratio": {"hub_vs_raw_throughput": round(ratio, 3),
                  "hub_plus_db_vs_echo_cpu_per_request": round((hub_cpu + db_cpu) / echo_cpu, 2) if echo_cpu else None},
        "target": {"hub_msg_s": TARGET_MSG_S, "hub_vs_raw_throughput": TARGET_RATIO,
                   "met": hub_msg_s >= TARGET_MSG_S and ratio >= TARGET_RATIO},
    }
    print_table([
        ("QoS 2 requests/s (median of rounds)", hub_msg_s, raw_msg_s, TARGET_MSG_S),
        ("  loaded P50 ms", hub.median("p50_ms"), raw.median("p50_ms"), "-"),
        ("  loaded P99 ms", hub.median("p99_ms"), raw.median("p99_ms"), "-"),
        (f"P50 ms at {LATENCY_RATE_MSG_S:.0f} msg/s", r["hub_latency"]["p50_ms"], r["raw_latency"]["p50_ms"], "-"),
        (f"P99 ms at {LATENCY_RATE_MSG_S:.0f} msg/s", r["hub_latency"]["p99_ms"], r["raw_latency"]["p99_ms"], "-"),
        ("CPU ms/request (responder)", round(hub_cpu, 3), round(echo_cpu, 3), "-"),
        ("CPU ms/request (PostgreSQL)", round(db_cpu, 3), "-", "-"),
        ("hub / raw throughput", round(ratio, 3), 1.0, TARGET_RATIO),
    ])
    print(f"   rounds hub {figures['hub_msg_s_rounds']} raw {baseline['raw_pair_msg_s_rounds']}; "
          f"load average {r['loadavg']['before']:.1f} → {r['loadavg']['after']:.1f} on {os.cpu_count()} CPUs")
    return result
