"""Dialogue sessions (one active per site plus a FIFO queue) and the timers that bound every wait.

A session is plain state; the dialogue manager moves it between phases under the site's lock. Every phase
change bumps ``gen``, and a timer fires only if the generation it was armed for is still current, so a late
timer can never end a session that has moved on (the Rhasspy bug where a stale timeout ended the next step).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

import structlog

log = structlog.get_logger("kitt.voice.session")


class Phase(StrEnum):
    STARTING = "starting"
    SPEAKING = "speaking"          # waiting for tts/sayFinished(say_id) or the T_say fallback
    LISTENING = "listening"        # asr/startListening sent; waiting for textCaptured
    RECOGNIZING = "recognizing"    # NLU and the internal handler are running
    WAIT_HANDLER = "wait_handler"  # an external Hermes app owns the next step (continue/endSession)
    WAIT_RESULT = "wait_result"    # a confirmed hazard is executing; waiting for the device's outcome
    ENDED = "ended"


class After(StrEnum):
    """What follows the current prompt once it has been spoken."""

    LISTEN = "listen"
    CONFIRM = "confirm"   # listen for the yes/no answer and arm the confirm timer
    END = "end"


@dataclass
class Session:
    id: str
    site: str
    custom_data: str | None = None
    lang: str | None = None
    intent_filter: tuple[str, ...] | None = None
    send_intent_not_recognized: bool = False
    kind: str = "action"                # action | notification
    init_text: str | None = None
    phase: Phase = Phase.STARTING
    step: int = 0
    gen: int = 0
    say_id: str | None = None
    after: After = After.END
    end_reason: str = "nominal"
    external: bool = False              # an external Hermes app has taken over the dialogue
    confirmation_id: str | None = None  # a hazard confirmation this session is bound to
    confirmation_level: str = "ack"
    prompt: str | None = None
    answered: bool = False              # the confirmation got its yes/no (never take a second one)
    reprompts: int = 0
    durable: bool = False               # has a voice_sessions row to close
    restored: bool = False              # rebuilt from the database after a restart
    started_at: float = field(default_factory=time.monotonic)

    def advance(self, phase: Phase) -> int:
        self.phase = phase
        self.gen += 1
        return self.gen

    @property
    def awaiting_answer(self) -> bool:
        """A confirmation answer is taken while the question is spoken or listened for, once."""
        return (self.confirmation_id is not None and not self.answered
                and self.phase in (Phase.SPEAKING, Phase.LISTENING))


@dataclass
class SiteState:
    active: Session | None = None
    queue: deque[Session] = field(default_factory=deque)
    disabled_intents: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RecentlyEnded:
    """Bounded memory of ended sessions, so a late answer can be recognised (and audited) as late."""

    def __init__(self, size: int = 1024) -> None:
        self._items: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self._size = size

    def add(self, session: Session) -> None:
        self._items[session.id] = (session.site, session.confirmation_id)
        self._items.move_to_end(session.id)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def get(self, session_id: str | None) -> tuple[str, str | None] | None:
        return self._items.get(session_id) if session_id else None


TimerCallback = Callable[[], Awaitable[None]]


class Timers:
    """Named one-shot timers, one slot per (session, slot): arming a slot replaces its previous timer."""

    def __init__(self) -> None:
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def arm(self, session: Session, slot: str, delay: float, callback: TimerCallback) -> None:
        key = (session.id, slot)
        self.cancel(session, slot)
        task = asyncio.create_task(self._run(delay, callback), name=f"kitt[voice].timer:{session.site}:{slot}")
        self._tasks[key] = task
        task.add_done_callback(lambda t, k=key: self._done(k, t))

    def cancel(self, session: Session, slot: str) -> None:
        task = self._tasks.pop((session.id, slot), None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def cancel_session(self, session: Session) -> None:
        for key in [k for k in self._tasks if k[0] == session.id]:
            task = self._tasks.pop(key)
            if task is not asyncio.current_task():
                task.cancel()

    async def _run(self, delay: float, callback: TimerCallback) -> None:
        await asyncio.sleep(delay)
        await callback()

    def _done(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("voice timer failed", timer=task.get_name(), error=repr(exc))

    async def close(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)


def say_timeout(text: str) -> float:
    """T_say: Rhasspy waits max(10 s, len/33 chars per second) for sayFinished; we add 2 s of slack."""
    return max(10.0, len(text) / 33.0) + 2.0
