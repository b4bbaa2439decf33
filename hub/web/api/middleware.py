"""Middlewares and signals of the web app: errors as JSON, authentication and CSRF, security headers."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from hub.errors import StoreError
from hub.web.api.errors import ApiError, count_rejection, error_response
from hub.web.api.keys import AUTH, PUBLIC_PATHS
from hub.web.api.routing import IDENTITY
from hub.web.auth import CSRF_HEADER, SAFE_METHODS, client_address, same_origin
from hub.web.keys import DEPS

log = structlog.get_logger("kitt.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# No inline script or style anywhere in the panel, so the policy can be strict.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def _is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical}" if resource is not None else "unmatched"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure under /api/ answers ``{"error", "detail"}``; 4xx count as rejected input."""
    if not _is_api(request):
        return await handler(request)
    metrics = request.app[DEPS].metrics
    started = time.perf_counter()
    try:
        return await handler(request)
    except ApiError as exc:
        if exc.status < 500:
            count_rejection(metrics, exc.error)
        return error_response(exc.status, exc.error, exc.detail, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTP_CODES.get(exc.status, "http_error")
        count_rejection(metrics, code)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, exc.reason, headers)
    except StoreError as exc:
        log.error("api call failed: store", route=_route_name(request), error=str(exc))
        return error_response(503, "store_unavailable", "the database did not answer; try again")
    except Exception:  # the last line: a bug answers 500 with a pointer to the log, the hub keeps serving
        log.exception("api call failed", route=_route_name(request))
        return error_response(500, "internal", "an unexpected error; see the hub's log")
    finally:
        metrics.request_latency.labels(route=f"api {_route_name(request)}").observe(time.perf_counter() - started)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """/api/ needs the bearer token or a session (reads too); cookie-made changes need the CSRF token."""
    if not _is_api(request):
        return await handler(request)
    resource = request.match_info.route.resource
    if resource is not None and resource.canonical in request.app[PUBLIC_PATHS]:
        return await handler(request)
    auth = request.app[AUTH]
    address = client_address(request)
    identity = auth.identify(request)
    # Locked out means locked out, even for the right token: a guesser learns nothing from the answer.
    bearer = identity is False or (identity is not None and identity.via == "bearer")
    if bearer and (retry := auth.throttle.retry_after(address)) is not None:
        raise ApiError(429, "throttled", "too many failed attempts; try later",
                           headers={"Retry-After": str(int(retry))})
    if identity is False:
        auth.throttle.failed(address)  # a wrong bearer token is a guess: it counts
        raise ApiError(401, "unauthorized", "the token is wrong", headers={"WWW-Authenticate": "Bearer"})
    if identity is None:
        raise ApiError(401, "unauthorized", "log in to the panel or send Authorization: Bearer <token>",
                       headers={"WWW-Authenticate": "Bearer"})
    if request.method not in SAFE_METHODS and identity.via == "session" and not (
            auth.csrf_ok(identity, request.headers.get(CSRF_HEADER)) and same_origin(request)):
        raise ApiError(403, "csrf", f"send the session's CSRF token in {CSRF_HEADER} (from GET /api/v1/session)")
    request[IDENTITY] = identity
    return await handler(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, errors and static files included (a signal, so nothing can bypass it)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
