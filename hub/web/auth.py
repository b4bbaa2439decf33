"""Who may use the panel and the API: the bearer token, panel sessions, CSRF, and login throttling.

Two ways in, one check: scripts and the CLI send ``Authorization: Bearer <token>``; the panel logs in once with
the token (``POST /login``) and then carries an HttpOnly, SameSite=Strict session cookie whose id is random and
kept only in memory (a restart logs everyone out, which is the safe direction). A browser sends cookies by
itself, so every cookie-authenticated change also needs the session's CSRF token in ``X-CSRF-Token`` (API) or
a ``csrf`` form field (panel forms). Bearer requests need no CSRF token: no browser attaches one on its own.

The token is compared in constant time and never logged; failed attempts (bad login, bad bearer) count per
client address and lock that address out for a window.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

SESSION_COOKIE = "kitt_session"
CSRF_COOKIE = "kitt_csrf"  # the pre-login double-submit token of the login form
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 256  # bounded: the oldest session goes first
THROTTLE_WINDOW_S = 300.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Clock = Callable[[], float]


def tokens_equal(given: str | None, expected: str) -> bool:
    """Constant-time comparison; an empty expected token never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def client_address(request: web.Request) -> str:
    # The panel is served directly (loopback or LAN), not behind a proxy: X-Forwarded-For is not trusted.
    return request.remote or "unknown"


@dataclass
class Session:
    user: str
    csrf: str
    created_at: float
    expires_at: float


class SessionStore:
    """Sessions in memory, keyed by a hash of the cookie value (the raw id is never kept)."""

    def __init__(self, *, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS,
                 clock: Clock = time.monotonic) -> None:
        self._ttl = ttl_s
        self._max = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    @staticmethod
    def _key(session_id: str) -> str:
        return hashlib.sha256(session_id.encode("utf-8")).hexdigest()

    def create(self, user: str = "web") -> tuple[str, Session]:
        self._purge()
        while len(self._sessions) >= self._max:
            self._sessions.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(user=user, csrf=secrets.token_urlsafe(32), created_at=now, expires_at=now + self._ttl)
        self._sessions[self._key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > 128:
            return None
        key = self._key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            del self._sessions[key]
            return None
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(self._key(session_id), None)

    def _purge(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]

    def __len__(self) -> int:
        return len(self._sessions)


class LoginThrottle:
    """At most ``max_failures`` failed attempts per client address within ``window_s``; then 429 until the
    oldest failure leaves the window. Bounded: at most ``max_clients`` addresses are remembered."""

    def __init__(self, *, max_failures: int, window_s: float = THROTTLE_WINDOW_S, max_clients: int = 4096,
                 clock: Clock = time.monotonic) -> None:
        self._max = max_failures
        self._window = window_s
        self._max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, address: str) -> deque[float]:
        now = self._clock()
        failures = self._failures.get(address)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        if not failures:
            del self._failures[address]
        return failures

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it may try now."""
        failures = self._recent(address)
        if len(failures) < self._max:
            return None
        return max(1.0, failures[0] + self._window - self._clock())

    def failed(self, address: str) -> None:
        failures = self._failures.setdefault(address, deque())
        self._failures.move_to_end(address)
        failures.append(self._clock())
        while len(failures) > self._max:
            failures.popleft()
        while len(self._failures) > self._max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: by bearer token (``session`` None) or by a panel session."""

    user: str
    via: str  # "bearer" | "session"
    session: Session | None = None


class Auth:
    """The one place that decides whether a request is authenticated and whether its CSRF token is right."""

    def __init__(self, *, token: Callable[[], str], max_failures: int, clock: Clock = time.monotonic) -> None:
        self._token = token  # read at call time: the hub sets the token after the app is built
        self.sessions = SessionStore(clock=clock)
        self.throttle = LoginThrottle(max_failures=max_failures, clock=clock)

    def check_token(self, given: str | None) -> bool:
        return tokens_equal(given, self._token())

    def identify(self, request: web.Request) -> Identity | bool | None:
        """The caller's identity; None when no credential was sent; False when a bearer token was wrong."""
        given = bearer_token(request)
        if given is not None:
            return Identity(user="api", via="bearer") if self.check_token(given) else False
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is not None:
            return Identity(user=session.user, via="session", session=session)
        return None

    @staticmethod
    def csrf_ok(identity: Identity, given: str | None) -> bool:
        if identity.via == "bearer":
            return True
        assert identity.session is not None
        return tokens_equal(given, identity.session.csrf)


def same_origin(request: web.Request) -> bool:
    """True unless the browser says the request comes from another site: a second line behind the CSRF token.

    ``Sec-Fetch-Site`` first (set by the browser, cannot be forged by a page, and present even where the
    panel's ``Referrer-Policy: no-referrer`` makes a form post send ``Origin: null``); else ``Origin``; else
    ``Referer``; no header at all is a non-browser client, which the token check covers.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin:
        return True
    if origin == "null":
        return False
    scheme, _, rest = origin.partition("://")
    host = rest.split("/", 1)[0]
    return scheme in ("http", "https") and host == request.host
