"""With ``telemetry.otlp_endpoint`` set, one request becomes one trace: request → understand → act → reply,
exported over OTLP/HTTP to a collector the test runs on loopback (the hub runs as a subprocess, so the global
tracer provider it installs stays its own)."""

from __future__ import annotations

import asyncio
import http.server
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from tests.support.config import make_config, make_config_dict
from tests.support.hubproc import HubProcess
from tests.support.hubs import ask_over_mqtt, isolated_devices

pytestmark = pytest.mark.fault
trace_pb = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")


class _Collector(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


def _spans() -> list:
    out = []
    for body in _Collector.bodies:
        req = trace_pb.ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                out.extend(ss.spans)
    return out


async def test_one_request_is_one_trace(db_dsn: str, state_dir: Path) -> None:
    _Collector.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hub_id = "trace" + state_dir.name[-6:].replace("-", "")
    data = make_config_dict(dsn=db_dsn, state_dir=state_dir, hub_id=hub_id,
                            plugins=("handlers.devices", "handlers.understanding", "handlers.ask"),
                            devices=isolated_devices(hub_id),
                            telemetry={"otlp_endpoint": f"http://127.0.0.1:{server.server_address[1]}"})
    hub = HubProcess(data, state_dir)
    try:
        await asyncio.to_thread(hub.start)
        config = make_config(dsn=db_dsn, state_dir=state_dir, hub_id=hub_id)  # where to ask: the hub's topics
        reply = await ask_over_mqtt(config, "is the front door locked?", site="kitchen", timeout=20)
        assert reply["route"] == "state"
        assert await asyncio.to_thread(hub.stop) == 0  # flushes the span batch on the way out
    finally:
        if hub.running:
            hub.kill()
        server.shutdown()
    by_name = {}
    for s in _spans():
        by_name.setdefault(s.name, []).append(s)
    assert {"request", "understand", "act", "reply"} <= set(by_name), sorted(by_name)
    request = by_name["request"][0]
    trace = request.trace_id
    for name in ("understand", "act", "reply"):
        child = by_name[name][0]
        assert child.trace_id == trace and child.parent_span_id == request.span_id, name
    attrs = {a.key: a.value.string_value for a in request.attributes}
    assert attrs.get("kitt.correlation_id") == reply["id"]
