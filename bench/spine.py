"""Spine throughput: QoS 2 requests through the hub (``kitt/<hub>/ask`` → inbox commit → handler transaction
with outbox row + audit event → relay → QoS 2 reply), beside a raw gmqtt request/reply echo pair on the same
broker in the same run.

Both sides get the same requester, broker, payloads and concurrency; both responders are separate processes
(the hub as ``python -m hub.cli run``, the echo as a bare gmqtt client). Two phases each:
- throughput: a closed loop with ``CONCURRENCY`` requests outstanding, replies counted over a fixed window;
- latency: an open loop at a fixed rate below both capacities (P50/P99 without queueing in the requester).

Needs Mosquitto (``/usr/sbin/mosquitto``) and the PostgreSQL at ``$KITT_TEST_PG`` (default 127.0.0.1:5432).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

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
        def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> int:
            asyncio.ensure_future(self._reply(payload, properties))
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


async def _measure(port: int, request_topic: str, seconds: float, warmup_s: float,
                   latency_s: float) -> dict[str, Any]:
    async with Requester(port, request_topic) as req:
        await req.open_loop(200, 0.5)  # warm the path (connections, caches) before measuring
        throughput = await req.closed_loop(seconds, warmup_s)
        latency = await req.open_loop(LATENCY_RATE_MSG_S, latency_s)
        return {"throughput": throughput, "latency": latency, "duplicates": req.duplicates}


async def _run_async(quick: bool) -> dict[str, Any]:
    from tests.support.config import make_config_dict
    from tests.support.db import temporary_database
    from tests.support.hubproc import HubProcess
    from tests.support.mosquitto import Mosquitto

    seconds, warmup_s, latency_s = (3.0, 1.0, 2.0) if quick else (10.0, 2.0, 6.0)
    work = Path(tempfile.mkdtemp(prefix="kitt-bench-spine-"))
    with Mosquitto(workdir=work / "broker") as broker:
        # The raw pair first: an echo responder process on the same broker.
        raw_topic = f"bench/{uuid.uuid4().hex[:8]}/req"
        echo = subprocess.Popen([sys.executable, "-c", f"from bench.spine import responder_main; "
                                 f"responder_main({broker.port}, {raw_topic!r})"], stdout=subprocess.PIPE)
        try:
            assert echo.stdout is not None
            if echo.stdout.readline().strip() != b"ready":
                raise RuntimeError("echo responder did not start")
            raw = await _measure(broker.port, raw_topic, seconds, warmup_s, latency_s)
        finally:
            echo.terminate()
            echo.wait(10)
        async with temporary_database("kitt_bench") as dsn:
            cfg = make_config_dict(dsn=dsn, state_dir=work / "state", mqtt_port=broker.port,
                                   plugins=("handlers.ask",), database={"pool_min": 4, "pool_max": 16})
            hub = HubProcess(cfg, work, name="hub")
            hub.start()
            try:
                through_hub = await _measure(broker.port, f"kitt/{cfg['hub']['id']}/ask", seconds, warmup_s,
                                             latency_s)
            finally:
                hub.stop()
    return {"raw": raw, "hub": through_hub, "seconds": seconds}


def run(quick: bool) -> dict[str, Any]:
    with _loop_runner() as runner:
        r = runner.run(_run_async(quick))
    hub, raw = r["hub"], r["raw"]
    ratio = hub["throughput"]["msg_s"] / raw["throughput"]["msg_s"] if raw["throughput"]["msg_s"] else 0.0
    figures = {
        "hub_msg_s": hub["throughput"]["msg_s"],
        "hub_loaded_p50_ms": hub["throughput"]["p50_ms"],
        "hub_loaded_p99_ms": hub["throughput"]["p99_ms"],
        "hub_p50_ms_at_rate": hub["latency"]["p50_ms"],
        "hub_p99_ms_at_rate": hub["latency"]["p99_ms"],
        "latency_rate_msg_s": LATENCY_RATE_MSG_S,
        "concurrency": CONCURRENCY,
        "raw_duplicate_replies_hub": hub["duplicates"],
    }
    baseline = {
        "raw_pair_msg_s": raw["throughput"]["msg_s"],
        "raw_loaded_p50_ms": raw["throughput"]["p50_ms"],
        "raw_loaded_p99_ms": raw["throughput"]["p99_ms"],
        "raw_p50_ms_at_rate": raw["latency"]["p50_ms"],
        "raw_p99_ms_at_rate": raw["latency"]["p99_ms"],
    }
    result = {
        "figures": figures,
        "baseline": baseline,
        "ratio": {"hub_vs_raw_throughput": round(ratio, 3)},
        "target": {"hub_msg_s": TARGET_MSG_S, "hub_vs_raw_throughput": TARGET_RATIO,
                   "met": hub["throughput"]["msg_s"] >= TARGET_MSG_S and ratio >= TARGET_RATIO},
    }
    print_table([
        ("QoS 2 requests/s (closed loop)", hub["throughput"]["msg_s"], raw["throughput"]["msg_s"], TARGET_MSG_S),
        ("  loaded P50 ms", hub["throughput"]["p50_ms"], raw["throughput"]["p50_ms"], "-"),
        ("  loaded P99 ms", hub["throughput"]["p99_ms"], raw["throughput"]["p99_ms"], "-"),
        (f"P50 ms at {LATENCY_RATE_MSG_S:.0f} msg/s", hub["latency"]["p50_ms"], raw["latency"]["p50_ms"], "-"),
        (f"P99 ms at {LATENCY_RATE_MSG_S:.0f} msg/s", hub["latency"]["p99_ms"], raw["latency"]["p99_ms"], "-"),
        ("hub / raw throughput", round(ratio, 3), 1.0, TARGET_RATIO),
    ])
    return result
