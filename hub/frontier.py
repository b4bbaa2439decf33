"""The frontier model: OpenAI-compatible chat completions over aiohttp, with a timeout and a circuit breaker.

The kernel knows no device: callers pass the tool schemas and map tool calls back to their own actions.
Failures raise ``FrontierError`` (with ``from exc``); while the breaker is open calls fail at once with
``FrontierUnavailable`` instead of waiting out a timeout per request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from hub.config import FrontierSection
from hub.errors import KittError

log = structlog.get_logger("kitt.frontier")


class FrontierError(KittError):
    """The frontier did not give a usable answer (HTTP error, timeout, malformed reply)."""


class FrontierUnavailable(FrontierError):
    """The circuit breaker is open: recent calls failed, so this one is not attempted."""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class FrontierReply:
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    model: str = ""
    usage: dict[str, Any] = field(default_factory=dict)


class CircuitBreaker:
    """closed → (``failures`` in a row) → open → (after ``reset_s``) half-open: one trial call decides."""

    def __init__(self, *, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self._reset_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial:
            self._trial = True  # exactly one trial call while half-open
            return True
        return False

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial = False

    def failure(self) -> None:
        self._failures += 1
        self._trial = False
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = self._clock()


def _parse_reply(body: Any) -> FrontierReply:
    try:
        message = body["choices"][0]["message"]
    except (KeyError, IndexError, TypeError) as exc:
        raise FrontierError("reply has no choices[0].message") from exc
    calls = []
    for raw in message.get("tool_calls") or []:
        fn = raw.get("function") or {}
        args = fn.get("arguments") or "{}"
        try:
            parsed = json.loads(args) if isinstance(args, str) else dict(args)
        except (ValueError, TypeError) as exc:
            raise FrontierError(f"tool call {fn.get('name')!r} has arguments that are not JSON") from exc
        if not isinstance(parsed, dict):
            raise FrontierError(f"tool call {fn.get('name')!r} arguments are not an object")
        calls.append(ToolCall(id=str(raw.get("id", "")), name=str(fn.get("name", "")), arguments=parsed))
    return FrontierReply(text=str(message.get("content") or "").strip(), tool_calls=tuple(calls),
                         model=str(body.get("model", "")), usage=dict(body.get("usage") or {}))


class FrontierClient:
    """``start()`` opens the HTTP session, ``stop()`` closes it; ``chat()`` is one completion."""

    def __init__(self, settings: FrontierSection, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self.breaker = CircuitBreaker(failures=settings.breaker_failures, reset_s=settings.breaker_reset_s,
                                      clock=clock)
        self.calls = 0

    @property
    def enabled(self) -> bool:
        return self._settings.enabled

    async def start(self) -> None:
        headers = {"Content-Type": "application/json"}
        if self._settings.api_key:
            headers["Authorization"] = f"Bearer {self._settings.api_key}"
        self._session = aiohttp.ClientSession(headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=self._settings.timeout_s))

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def status(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "breaker": self.breaker.state, "calls": self.calls}

    async def chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                   temperature: float = 0.2) -> FrontierReply:
        if self._session is None:
            raise FrontierError("frontier client not started")
        if not self.breaker.allow():
            raise FrontierUnavailable("the frontier model failed repeatedly; not trying for a while")
        url = self._settings.base_url.rstrip("/") + "/chat/completions"
        body: dict[str, Any] = {"model": self._settings.model, "messages": messages, "temperature": temperature}
        if tools:
            body["tools"] = tools
            body["tool_choice"] = "auto"
        self.calls += 1
        started = time.perf_counter()
        try:
            async with self._session.post(url, json=body) as resp:
                if resp.status != 200:
                    detail = (await resp.text())[:200]
                    raise FrontierError(f"HTTP {resp.status} from {url}: {detail}")
                data = await resp.json(content_type=None)
            reply = _parse_reply(data)
        except FrontierError:
            self.breaker.failure()
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.breaker.failure()
            raise FrontierError(f"{type(exc).__name__} talking to {url}: {exc}") from exc
        self.breaker.success()
        log.info("frontier answered", ms=round((time.perf_counter() - started) * 1000, 1),
                 tool_calls=len(reply.tool_calls))
        return reply
