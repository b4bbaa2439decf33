"""Tracing helpers: the no-op path, correlation ids in logs, and the real SDK with an in-memory exporter."""

from __future__ import annotations

import asyncio
import builtins
import http.server
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import structlog

from hub import tracing
from hub.tracing import (
    NoopTracer,
    add_correlation_id,
    add_trace_ids,
    bind_correlation,
    correlation_id_var,
    setup_tracing,
    span,
    traces_url,
)

# --- no-op path --------------------------------------------------------------------------------------------


def test_empty_endpoint_gives_a_noop_tracer() -> None:
    tracer = setup_tracing("", "kitt-hub")
    assert isinstance(tracer, NoopTracer)
    assert not tracer.enabled
    with tracer.span("request", topic="kitt/x/ask", site=None) as s:
        s.set_attribute("k", "v")
        s.add_event("e")
        s.record_exception(ValueError("x"))
    tracer.shutdown()


def test_exceptions_propagate_through_noop_spans() -> None:
    with pytest.raises(KeyError), NoopTracer().span("request"):
        raise KeyError("boom")


@pytest.fixture
def without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    tracing._otel_trace_api.cache_clear()
    yield
    monkeypatch.undo()
    tracing._otel_trace_api.cache_clear()


@pytest.mark.usefixtures("without_opentelemetry")
def test_configured_endpoint_without_opentelemetry_falls_back_to_noop() -> None:
    tracer = setup_tracing("http://127.0.0.1:4318", "kitt-hub")
    assert isinstance(tracer, NoopTracer)
    with span("request", id="1") as s:  # the module-level helper works too
        s.set_attribute("k", 1)
    assert add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}


def test_traces_url() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://otel.example/custom/traces") == "https://otel.example/custom/traces"


# --- correlation id ----------------------------------------------------------------------------------------


def test_bind_correlation_sets_and_restores() -> None:
    assert correlation_id_var.get() is None
    with bind_correlation("outer") as outer:
        assert outer == "outer"
        with bind_correlation() as inner:
            assert inner and inner != "outer"
            assert correlation_id_var.get() == inner
        assert correlation_id_var.get() == "outer"
    assert correlation_id_var.get() is None


def test_bind_correlation_restores_after_an_error() -> None:
    with pytest.raises(RuntimeError), bind_correlation("c1"):
        raise RuntimeError
    assert correlation_id_var.get() is None


def test_processor_adds_the_id_only_when_bound() -> None:
    assert add_correlation_id(None, "info", {"event": "x"}) == {"event": "x"}
    with bind_correlation("abc"):
        assert add_correlation_id(None, "info", {"event": "x"}) == {"event": "x", "correlation_id": "abc"}
        # An explicit value on the event wins.
        assert add_correlation_id(None, "info", {"event": "x", "correlation_id": "z"})["correlation_id"] == "z"


async def test_correlation_follows_tasks_and_stays_separate_per_request() -> None:
    async def handle(cid: str) -> tuple[str | None, str | None]:
        with bind_correlation(cid):
            await asyncio.sleep(0)
            child = asyncio.create_task(asyncio.sleep(0, result=correlation_id_var.get()))
            return correlation_id_var.get(), await child

    results = await asyncio.gather(*(handle(f"req-{i}") for i in range(5)))
    assert results == [(f"req-{i}", f"req-{i}") for i in range(5)]


def test_every_log_line_carries_the_correlation_id() -> None:
    with structlog.testing.capture_logs(processors=[add_correlation_id]) as captured:
        logger = structlog.get_logger("kitt.test")
        logger.info("before")
        with bind_correlation("req-42"):
            logger.info("during", topic="kitt/x/ask")
        logger.info("after")
    assert [e.get("correlation_id") for e in captured] == [None, "req-42", None]


# --- the real SDK ------------------------------------------------------------------------------------------


@pytest.fixture
def memory_exporter() -> Any:
    export = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    return export.InMemorySpanExporter()


def test_sdk_spans_nest_request_understand_act_reply(memory_exporter: Any) -> None:
    tracer = setup_tracing("", "kitt-test", exporter=memory_exporter, install_global=False)
    assert tracer.enabled
    with bind_correlation("req-7"), tracer.span("request", topic="kitt/kitt/ask", site="kitchen"):
        with tracer.span("understand", intent="light.on"):
            pass
        with tracer.span("act", device="kitchen_light", hazard=False, skipped=None):
            pass
        with tracer.span("reply"):
            pass
    spans = {s.name: s for s in memory_exporter.get_finished_spans()}
    assert set(spans) == {"request", "understand", "act", "reply"}
    root = spans["request"]
    assert root.parent is None
    for child in ("understand", "act", "reply"):
        assert spans[child].parent is not None
        assert spans[child].parent.span_id == root.context.span_id
        assert spans[child].context.trace_id == root.context.trace_id
    assert root.attributes["site"] == "kitchen"
    assert root.attributes["kitt.correlation_id"] == "req-7"
    assert spans["act"].attributes["hazard"] is False
    assert "skipped" not in spans["act"].attributes
    assert root.resource.attributes["service.name"] == "kitt-test"
    tracer.shutdown()


def test_sdk_span_records_the_error(memory_exporter: Any) -> None:
    tracer = setup_tracing("", "kitt-test", exporter=memory_exporter, install_global=False)
    with pytest.raises(ValueError), tracer.span("act"):
        raise ValueError("device offline")
    (finished,) = memory_exporter.get_finished_spans()
    assert not finished.status.is_ok
    assert any(e.name == "exception" for e in finished.events)


def test_trace_ids_reach_the_log_line(memory_exporter: Any) -> None:
    tracer = setup_tracing("", "kitt-test", exporter=memory_exporter, install_global=False)
    with tracer.span("request") as s:
        event = add_trace_ids(None, "info", {"event": "x"})
        ctx = s.get_span_context()
    assert event["trace_id"] == f"{ctx.trace_id:032x}"
    assert event["span_id"] == f"{ctx.span_id:016x}"
    assert add_trace_ids(None, "info", {"event": "y"}) == {"event": "y"}  # outside any span


class _Collector(http.server.BaseHTTPRequestHandler):
    """A stand-in OTLP/HTTP collector that records what it is sent."""

    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


def test_otlp_http_export_reaches_the_collector() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    _Collector.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, name="fake-collector", daemon=True)
    thread.start()
    try:
        tracer = setup_tracing(f"http://127.0.0.1:{server.server_address[1]}", "kitt-test", install_global=False)
        assert tracer.enabled
        with tracer.span("request", site="kitchen"):
            pass
        tracer.shutdown(timeout_s=5)  # flushes the batch
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert len(_Collector.received) == 1
    path, content_type, body = _Collector.received[0]
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    assert b"request" in body and b"kitt-test" in body and b"kitchen" in body
