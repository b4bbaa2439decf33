"""Readiness: named checks, each saying ok or why not. ``/readyz`` and systemd READY=1 use the same answer."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Check = Callable[[], "bool | str | Awaitable[bool | str | None] | None"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    reason: str
    required: bool


class Readiness:
    """``required`` checks gate readiness; the others (model warm-up, vectors) are reported only."""

    def __init__(self) -> None:
        self._checks: dict[str, tuple[Check, bool]] = {}

    def add(self, name: str, check: Check, *, required: bool = True) -> None:
        self._checks[name] = (check, required)

    def remove(self, name: str) -> None:
        self._checks.pop(name, None)

    async def evaluate(self) -> tuple[bool, list[CheckResult]]:
        results = []
        # A snapshot: checks are added while the hub starts, and evaluating awaits (store ping).
        for name, (check, required) in list(self._checks.items()):
            try:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
            except Exception as exc:  # a check that raises is a failed check, with its reason
                value = f"{type(exc).__name__}: {exc}"
            if value is True or value is None:
                results.append(CheckResult(name, True, "ok", required))
            else:
                reason = value if isinstance(value, str) else "not ready"
                results.append(CheckResult(name, False, reason, required))
        ready = all(r.ok for r in results if r.required) and any(r.required for r in results)
        return ready, results
