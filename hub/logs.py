"""Structured logging (structlog), configured once by the entry point: JSON for machines, console for people."""

from __future__ import annotations

import logging
import sys

import structlog

from hub.tracing import add_correlation_id, add_trace_ids

_SECRET_KEYS = frozenset({"token", "password", "pin", "api_key", "secret", "authorization", "cookie"})


def _redact_secrets(_: object, __: str, event: dict[str, object]) -> dict[str, object]:
    """No secret in logs: any field named like one is masked, whatever code logged it."""
    for key in list(event):
        if key.lower() in _SECRET_KEYS and event[key]:
            event[key] = "***"
    return event


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now, not the object that was there when logging was configured
    (a replaced or closed stream — a test's capture, a daemon's redirect — must not break every later log call)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(*, level: str = "info", fmt: str = "console") -> None:
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    numeric = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_correlation_id,
            add_trace_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_secrets,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        # Not cached: a reconfiguration (tests, a CLI command run in-process) reaches every logger.
        cache_logger_on_first_use=False,
    )
    # Libraries that use stdlib logging (gmqtt, asyncpg, aiohttp) go to stderr at warning and above.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=_CurrentStderr(),  # type: ignore[arg-type]
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("gmqtt").setLevel(logging.ERROR)
