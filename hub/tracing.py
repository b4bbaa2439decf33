"""Optional OpenTelemetry tracing and the request correlation id carried by every log line.

Tracing is optional twice over: with ``telemetry.otlp_endpoint`` empty, or without the ``otel`` extra
(``opentelemetry-sdk``, ``opentelemetry-exporter-otlp-proto-http``) installed, :func:`setup_tracing`
returns a :class:`NoopTracer` and every span costs a context manager and nothing more. Code that traces
never checks which one it got.

The correlation id lives in a :class:`~contextvars.ContextVar`, so it follows a request across ``await``
and into the tasks it creates; :func:`add_correlation_id` copies it into every structlog event.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from structlog.typing import EventDict, WrappedLogger

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = structlog.get_logger("kitt.tracing")

AttrValue = str | bool | int | float | Sequence[str] | Sequence[bool] | Sequence[int] | Sequence[float]

#: The id of the request being handled: set by the spine per inbound message (``bind_correlation``).
correlation_id_var: ContextVar[str | None] = ContextVar("kitt_correlation_id", default=None)

CORRELATION_ATTRIBUTE = "kitt.correlation_id"


# --- correlation id ----------------------------------------------------------------------------------------


def new_correlation_id() -> str:
    return uuid.uuid4().hex


@contextlib.contextmanager
def bind_correlation(cid: str | None = None) -> Iterator[str]:
    """Make ``cid`` (a new one when None or empty) the current correlation id inside the block."""
    value = cid or new_correlation_id()
    token = correlation_id_var.set(value)
    try:
        yield value
    finally:
        correlation_id_var.reset(token)


def add_correlation_id(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: ``correlation_id`` from the context, unless the event already carries one."""
    cid = correlation_id_var.get()
    if cid is not None:
        event_dict.setdefault("correlation_id", cid)
    return event_dict


def add_trace_ids(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: ``trace_id``/``span_id`` of the current recording span, to join logs and traces."""
    trace = _otel_trace_api()
    if trace is None:
        return event_dict
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", f"{ctx.trace_id:032x}")
        event_dict.setdefault("span_id", f"{ctx.span_id:016x}")
    return event_dict


# --- spans -------------------------------------------------------------------------------------------------


class SpanLike(Protocol):
    def set_attribute(self, key: str, value: Any) -> None: ...
    def add_event(self, name: str, attributes: Any = None) -> None: ...
    def record_exception(self, exception: BaseException) -> None: ...


class Tracer(Protocol):
    @property
    def enabled(self) -> bool: ...
    def span(self, name: str, **attrs: Any) -> contextlib.AbstractContextManager[SpanLike]: ...
    def shutdown(self, timeout_s: float = 5.0) -> None: ...


class NoopSpan:
    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def add_event(self, name: str, attributes: Any = None) -> None:
        return None

    def record_exception(self, exception: BaseException) -> None:
        return None


class NoopTracer:
    """What :func:`setup_tracing` returns when tracing is off: spans that do nothing."""

    enabled = False

    @contextlib.contextmanager
    def span(self, name: str, **attrs: Any) -> Iterator[SpanLike]:
        yield NoopSpan()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        return None


class OtelTracer:
    """Spans through an OpenTelemetry SDK ``TracerProvider`` that this object owns."""

    enabled = True

    def __init__(self, provider: TracerProvider, name: str = "kitt-hub") -> None:
        self._provider = provider
        self._tracer = provider.get_tracer(name)

    @contextlib.contextmanager
    def span(self, name: str, **attrs: Any) -> Iterator[SpanLike]:
        with self._tracer.start_as_current_span(name, attributes=_span_attributes(attrs)) as s:
            yield s

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Export what is buffered, then stop. Blocking (HTTP): call it via ``asyncio.to_thread``."""
        self._provider.force_flush(timeout_millis=int(timeout_s * 1000))
        self._provider.shutdown()


def setup_tracing(
    endpoint: str,
    service_name: str,
    *,
    exporter: SpanExporter | None = None,
    install_global: bool = True,
) -> Tracer:
    """A tracer exporting to ``endpoint`` over OTLP/HTTP, or a :class:`NoopTracer`.

    ``endpoint`` is the collector's base URL (``http://collector:4318``, ``/v1/traces`` is added) or the
    full traces URL. ``exporter`` replaces the OTLP exporter (tests: an ``InMemorySpanExporter``; spans
    are then exported synchronously). ``install_global`` also makes it OpenTelemetry's global provider,
    which the module-level :func:`span` and instrumentation libraries use; do it once per process.
    """
    if not endpoint and exporter is None:
        return NoopTracer()
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        log.warning(
            "tracing.unavailable",
            endpoint=endpoint,
            error=str(exc),
            hint="install the otel extra: pip install 'kitt-hub[otel]'",
        )
        return NoopTracer()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is None:
        url = traces_url(endpoint)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url, timeout=5)))
        log.info("tracing.enabled", endpoint=url, service_name=service_name)
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if install_global:
        trace.set_tracer_provider(provider)
    return OtelTracer(provider)


@contextlib.contextmanager
def span(name: str, **attrs: Any) -> Iterator[SpanLike]:
    """A span from OpenTelemetry's global provider (see ``install_global``); a no-op without OpenTelemetry.

    For code that has no :class:`Tracer` at hand. Nests under the current span either way.
    """
    trace = _otel_trace_api()
    # No provider installed (tracing off, the usual case): skip OpenTelemetry's no-op machinery, which
    # costs a context attach/detach per span on the hot path.
    if trace is None or not _global_provider_set(trace):
        yield NoopSpan()
        return
    tracer = trace.get_tracer("kitt-hub")
    with tracer.start_as_current_span(name, attributes=_span_attributes(attrs)) as s:
        yield s


_UNKNOWN = object()


def _global_provider_set(trace: ModuleType) -> bool:
    """Whether a real provider is installed. ``get_tracer_provider()`` reads ``os.environ`` on every call until
    one is, which costs more than the rest of a span; the module global it consults is read directly."""
    provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is _UNKNOWN:  # a future OpenTelemetry without that global: ask the slow way
        return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return provider is not None


def traces_url(endpoint: str) -> str:
    base = endpoint.rstrip("/")
    scheme_sep = base.find("://")
    has_path = scheme_sep >= 0 and "/" in base[scheme_sep + 3 :]
    return base if has_path else f"{base}/v1/traces"


@functools.cache
def _otel_trace_api() -> ModuleType | None:
    """``opentelemetry.trace`` or None; looked up once (a failed import is not cached by Python)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace


def _span_attributes(attrs: dict[str, Any]) -> dict[str, AttrValue]:
    """OpenTelemetry accepts str/bool/int/float (and sequences of one of them): drop None, str the rest."""
    out: dict[str, AttrValue] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, str | bool | int | float):
            out[key] = value
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            out[key] = list(value)
        else:
            out[key] = str(value)
    cid = correlation_id_var.get()
    if cid is not None:
        out.setdefault(CORRELATION_ATTRIBUTE, cid)
    return out
