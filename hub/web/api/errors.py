"""API errors: one JSON shape (``{"error": code, "detail": …}``) for every 4xx/5xx under ``/api/``.

``error`` is a short, stable code a script can switch on (and the ``reason`` label of
``kitt_messages_rejected_total`` as ``api_<code>``); ``detail`` says what was wrong in words or, for validation
failures, as a list of ``{"field", "problem"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from hub.metrics import Metrics


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


def error_response(status: int, error: str, detail: Any = None,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


def count_rejection(metrics: Metrics, error: str) -> None:
    # Codes come from this package, never from the client, so the label set stays small.
    metrics.messages_rejected.labels(reason=f"api_{error}").inc()


def validation_problems(exc: ValidationError) -> list[dict[str, str]]:
    """Name each wrong field and what is wrong with it (no echo of secrets: inputs are not included)."""
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<body>"
        problems.append({"field": loc, "problem": err["msg"].removeprefix("Value error, ")})
    return problems


def service_unavailable(name: str) -> ApiError:
    return ApiError(503, "service_unavailable", f"the {name} service is not running on this hub")


def require(services: Any, name: str) -> Any:
    """The named service, or a 503 that says which one is missing (plugins may be disabled or failed)."""
    service = getattr(services, name, None)
    if service is None:
        raise service_unavailable(name)
    return service
