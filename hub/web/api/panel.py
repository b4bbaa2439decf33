"""The panel's own routes: ``/`` (the page), ``/login`` and ``/logout`` (forms), ``/static/`` (assets).

The page is static HTML + JS (no build step, nothing from a CDN); everything it shows comes from /api/v1 and
the live WebSocket. Login is a plain form so it works before any script runs: the token in, a session
cookie out. The login form carries a double-submit CSRF token (cookie + hidden field) so another site
cannot log a browser into this hub; logout needs the session's own CSRF token.
"""

from __future__ import annotations

import html
import secrets
from pathlib import Path
from string import Template

import structlog
from aiohttp import web

from hub.web.api.keys import AUTH
from hub.web.auth import CSRF_COOKIE, SESSION_COOKIE, SESSION_TTL_S, client_address, same_origin, tokens_equal

log = structlog.get_logger("kitt.web.panel")

STATIC = Path(__file__).resolve().parent.parent / "static"
MAX_FORM_BYTES = 4096


def _cookie_args(request: web.Request, *, http_only: bool, max_age: int | None) -> dict[str, object]:
    return {"httponly": http_only, "samesite": "Strict", "path": "/", "secure": request.secure,
            "max_age": max_age}


def _login_page(request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
    csrf = request.cookies.get(CSRF_COOKIE) or ""
    if not 20 <= len(csrf) <= 128:
        csrf = secrets.token_urlsafe(32)
    page = Template((STATIC / "login.html").read_text(encoding="utf-8")).substitute(
        csrf=html.escape(csrf, quote=True),
        error=f'<p class="error" role="alert">{html.escape(error)}</p>' if error else "",
    )
    response = web.Response(text=page, content_type="text/html", status=status)
    response.set_cookie(CSRF_COOKIE, csrf, **_cookie_args(request, http_only=True, max_age=3600))
    return response


async def index(request: web.Request) -> web.StreamResponse:
    if request.app[AUTH].sessions.get(request.cookies.get(SESSION_COOKIE)) is None:
        raise web.HTTPSeeOther("/login")
    return web.FileResponse(STATIC / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})


async def login_form(request: web.Request) -> web.Response:
    if request.app[AUTH].sessions.get(request.cookies.get(SESSION_COOKIE)) is not None:
        raise web.HTTPSeeOther("/")
    return _login_page(request)


async def _form(request: web.Request) -> dict[str, str]:
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_FORM_BYTES, actual_size=request.content_length)
    data = await request.post()
    return {k: v for k, v in data.items() if isinstance(v, str)}


async def login(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    address = client_address(request)
    if (retry := auth.throttle.retry_after(address)) is not None:
        response = _login_page(request, error="Too many failed attempts. Try again later.", status=429)
        response.headers["Retry-After"] = str(int(retry))
        return response
    form = await _form(request)
    # Double submit: the hidden field must equal the cookie this browser got with the form.
    if not same_origin(request) or not tokens_equal(form.get("csrf"), request.cookies.get(CSRF_COOKIE, "")):
        return _login_page(request, error="The form expired. Please try again.", status=403)
    if not auth.check_token(form.get("token")):
        auth.throttle.failed(address)
        log.warning("panel login failed", client=address)  # never the token itself
        return _login_page(request, error="That token is not right.", status=401)
    auth.throttle.succeeded(address)
    session_id, _session = auth.sessions.create("web")
    log.info("panel login", client=address)
    response = web.HTTPSeeOther("/")
    response.set_cookie(SESSION_COOKIE, session_id,
                        **_cookie_args(request, http_only=True, max_age=int(SESSION_TTL_S)))
    response.del_cookie(CSRF_COOKIE, path="/")
    raise response


async def logout(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    session_id = request.cookies.get(SESSION_COOKIE)
    session = auth.sessions.get(session_id)
    form = await _form(request)
    if session is not None:
        if not same_origin(request) or not tokens_equal(form.get("csrf"), session.csrf):
            raise web.HTTPForbidden(text="CSRF token missing or wrong")
        auth.sessions.drop(session_id)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


def setup(app: web.Application) -> None:
    app.router.add_get("/", index, name="panel")
    app.router.add_get("/login", login_form, name="login_form")
    app.router.add_post("/login", login, name="login")
    app.router.add_post("/logout", logout, name="logout")
    app.router.add_static("/static/", STATIC, name="static", append_version=False)
