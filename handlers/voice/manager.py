"""The Hermes dialogue manager: sessions per site, NLU through ``services.understanding``, internal intent
handling through ``understanding.act``, hand-off to external Hermes apps, and the hazard confirmation dialogue.

Every entry point takes the site's lock, so one site's messages and timers never interleave while sites run
in parallel. Handlers never wait on the satellite (sayFinished, an answer) inside a handler: they set the
next phase, arm a timer and return; the next message or the timer moves the session on.

Security rules of the confirmation dialogue (hermes-voice.md §6.3): an answer counts only when it carries
the session's sessionId AND comes from the session's siteId; anything else aimed at a confirmation is refused
and audited (``security.confirmation_refused``), and nothing is published. The confirmation service enforces
the same binding again when it approves, and executes exactly once through the outbox.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import structlog

from handlers.voice import replies
from handlers.voice import topics as T
from handlers.voice.durable import OpenSession
from handlers.voice.messages import (
    Configure,
    ContinueSession,
    EndSession,
    HotwordDetected,
    NluQuery,
    SayFinished,
    StartSession,
    TextCaptured,
    compact,
    intent_payload,
    safe_intent_name,
)
from handlers.voice.session import After, Phase, RecentlyEnded, Session, SiteState, Timers, say_timeout
from hub.config import VoiceSection
from hub.contracts import Confirmation, ConfirmationError, Principal, Understanding
from hub.errors import StoreError

log = structlog.get_logger("kitt.voice")

CONFIRM_INTENTS = ("ConfirmYes", "ConfirmNo")
MIN_CONFIDENCE = 0.5
MIN_CONFIRM_CONFIDENCE = 0.8
NOT_RECOGNIZED = ("", "Unknown", "unknown", "None")
# How long to wait for a confirmed hazard's outcome beyond the confirmation service's own 10 s timeout.
RESULT_GRACE_S = 15.0
# After a restart, let answers the broker queued arrive before re-asking the question.
REASK_GRACE_S = 0.3


class SessionRows(Protocol):
    async def open(self, conn: asyncpg.Connection, *, site: str, session_id: str, confirmation_id: str,
                   custom_data: str | None, lang: str | None) -> None: ...

    async def arm_deadline(self, site: str, session_id: str, seconds: float) -> None: ...

    async def close(self, site: str, session_id: str, reason: str) -> None: ...

    async def open_sessions(self) -> list[OpenSession]: ...


@dataclass
class VoiceDeps:
    """The few collaborators the dialogue manager needs, so it can be driven by fakes in unit tests."""

    publish: Callable[..., Awaitable[None]]   # (topic, payload, *, wait=False): wait for the PUBACK
    transaction: Callable[[Any], contextlib.AbstractAsyncContextManager[asyncpg.Connection]]
    record_event: Callable[..., Awaitable[Any]]
    sessions: SessionRows
    services: Any                     # hub.plugins.Services: understanding, confirmations, devices (read late)
    count_rejected: Callable[[str], None] = field(default=lambda reason: None)


class DialogueManager:
    def __init__(self, *, config: VoiceSection, deps: VoiceDeps) -> None:
        self._cfg = config
        self._deps = deps
        self._sites: dict[str, SiteState] = {}
        self._by_id: dict[str, Session] = {}
        self._by_confirmation: dict[str, Session] = {}
        self._recent = RecentlyEnded()
        self.timers = Timers()
        self.stats: dict[str, int] = {"refused": 0, "dropped": 0, "sessions": 0}
        # Steps of restored sessions start here, so inbox dedupe keys (session|step|digest) of this process
        # never collide with those of an earlier one: an answer repeated after a second restart is new.
        self._epoch = int(time.time() * 1000)

    # --- lookups -------------------------------------------------------------------------------------

    def site(self, site: str) -> SiteState:
        state = self._sites.get(site)
        if state is None:
            state = self._sites[site] = SiteState()
        return state

    def session(self, session_id: str | None) -> Session | None:
        return self._by_id.get(session_id) if session_id else None

    def step_of(self, session_id: str | None) -> int | None:
        s = self.session(session_id)
        return s.step if s is not None else None

    @contextlib.asynccontextmanager
    async def locked(self, site: str) -> AsyncIterator[SiteState]:
        state = self.site(site)
        async with state.lock:
            yield state

    async def close(self) -> None:
        await self.timers.close()

    # --- publishing ----------------------------------------------------------------------------------

    async def _pub(self, topic: str, payload: dict[str, Any], *, wait: bool = False) -> None:
        if wait:
            await self._deps.publish(topic, payload, wait=True)
        else:
            await self._deps.publish(topic, payload)

    async def _say(self, s: Session, text: str, *, say_id: str, after: After, end_reason: str = "nominal") -> None:
        s.advance(Phase.SPEAKING)
        s.say_id, s.after, s.end_reason = say_id, after, end_reason
        await self._pub(T.SAY, compact(text=text, siteId=s.site, sessionId=s.id, id=say_id,
                                       lang=s.lang or self._cfg.language))
        gen = s.gen
        # T_say: satellites that never send sayFinished must not hang the session (continue, as Rhasspy does).
        self.timers.arm(s, "phase", say_timeout(text), lambda: self._on_say_timeout(s, gen))

    async def _listen(self, s: Session, *, confirm: bool = False) -> None:
        gen = s.advance(Phase.LISTENING)
        filt = list(CONFIRM_INTENTS) if confirm and s.confirmation_level == "ack" else (
            None if confirm else (list(s.intent_filter) if s.intent_filter is not None else None))
        await self._pub(T.START_LISTENING, compact(siteId=s.site, sessionId=s.id, intentFilter=filt,
                                                   lang=s.lang, stopOnSilence=True, sendAudioCaptured=False))
        if confirm:
            self.timers.arm(s, "phase", self._cfg.confirm_timeout_s, lambda: self._on_confirm_timeout(s, gen))
        else:
            self.timers.arm(s, "phase", self._cfg.listen_timeout_s, lambda: self._on_timeout(s, gen))

    # --- session lifecycle ---------------------------------------------------------------------------

    def _register(self, s: Session) -> None:
        self._by_id[s.id] = s
        if s.confirmation_id:
            self._by_confirmation[s.confirmation_id] = s

    async def _start(self, state: SiteState, s: Session, *, announce: bool = True) -> None:
        state.active = s
        self._register(s)
        self.stats["sessions"] += 1
        s.started_at = time.monotonic()
        if announce:
            await self._pub(T.SESSION_STARTED, compact(sessionId=s.id, siteId=s.site, customData=s.custom_data,
                                                       lang=s.lang))
            await self._pub(T.HOTWORD_OFF, {"siteId": s.site, "reason": "dialogueSession"})
        # Hard cap from sessionStarted (hermes-voice.md §6.2), whatever the phase.
        self.timers.arm(s, "cap", self._cfg.session_timeout_s, lambda: self._on_cap(s))
        if s.kind == "notification":
            await self._say(s, s.init_text or "", say_id=f"{s.id}:n", after=After.END)
        elif s.init_text:
            await self._say(s, s.init_text, say_id=f"{s.id}:{s.step}", after=After.LISTEN)
        else:
            await self._listen(s)

    async def _end(self, state: SiteState, s: Session, reason: str, *, start_next: bool = True) -> None:
        """ENDED(reason): settle the confirmation first (write-ahead), then tell the site."""
        if s.phase == Phase.ENDED:
            return
        self.timers.cancel_session(s)
        s.advance(Phase.ENDED)
        if s.confirmation_id and not s.answered:
            await self._settle_unanswered(s, reason)
        await self._pub(T.STOP_LISTENING, {"siteId": s.site, "sessionId": s.id})
        # A durable dialogue's row is closed only once the broker has its sessionEnded: a crash in between
        # ends it again after the restart (a harmless repeat) instead of leaving the satellite waiting.
        await self._pub(T.SESSION_ENDED, compact(sessionId=s.id, siteId=s.site, customData=s.custom_data,
                                                 termination={"reason": reason}), wait=s.durable)
        if s.durable:
            try:
                await self._deps.sessions.close(s.site, s.id, reason)
            except StoreError as exc:
                # The session still ends for the user; on the next start the row is re-read and ended again.
                log.error("could not close the voice session row", session_id=s.id, error=str(exc))
        self._by_id.pop(s.id, None)
        if s.confirmation_id:
            self._by_confirmation.pop(s.confirmation_id, None)
        self._recent.add(s)
        if state.active is s:
            state.active = None
        if start_next and state.queue:
            await self._start(state, state.queue.popleft())
        elif state.active is None:
            await self._pub(T.HOTWORD_ON, {"siteId": s.site, "reason": "dialogueSession"})

    async def _settle_unanswered(self, s: Session, reason: str) -> None:
        """A dialogue that ends without an answer must not leave its confirmation answerable (nor re-asked)."""
        service = self._deps.services.confirmations
        if service is None or s.confirmation_id is None:
            return
        s.answered = True
        try:
            if reason == "timeout":
                await service.expire(s.confirmation_id, reason="voice confirm timeout")
            else:
                await service.cancel(s.confirmation_id,
                                     principal=Principal(kind="voice", site=s.site, session_id=s.id))
        except ConfirmationError as exc:
            log.info("confirmation already settled", confirmation_id=s.confirmation_id, reason=exc.reason)

    # --- timers --------------------------------------------------------------------------------------

    async def _on_say_timeout(self, s: Session, gen: int) -> None:
        async with self.locked(s.site) as state:
            if s.gen != gen or s.phase != Phase.SPEAKING:
                return
            log.warning("no sayFinished in time; continuing", site=s.site, session_id=s.id, say_id=s.say_id)
            await self._after_say(state, s)

    async def _on_timeout(self, s: Session, gen: int) -> None:
        async with self.locked(s.site) as state:
            if s.gen == gen and s.phase != Phase.ENDED:
                await self._end(state, s, "timeout")

    async def _on_confirm_timeout(self, s: Session, gen: int) -> None:
        async with self.locked(s.site) as state:
            if s.gen == gen and s.phase == Phase.LISTENING and not s.answered:
                await self._record_event("voice.confirmation_timeout", s, {"confirmation_id": s.confirmation_id})
                await self._end(state, s, "timeout")

    async def _on_cap(self, s: Session) -> None:
        async with self.locked(s.site) as state:
            # A confirmed hazard is past the point of no return: let its result be said.
            if s.phase not in (Phase.ENDED, Phase.WAIT_RESULT):
                await self._end(state, s, "timeout")

    async def _after_say(self, state: SiteState, s: Session) -> None:
        self.timers.cancel(s, "phase")
        if s.after == After.LISTEN:
            await self._listen(s)
        elif s.after == After.CONFIRM:
            # The confirm timer starts after the question was spoken (snips-issues#171); the deadline is
            # durable so a restart after it has passed ends the dialogue instead of re-asking.
            await self._deps.sessions.arm_deadline(s.site, s.id, self._cfg.confirm_timeout_s)
            await self._listen(s, confirm=True)
        else:
            await self._end(state, s, s.end_reason)

    # --- inbound: session control --------------------------------------------------------------------

    async def on_hotword(self, msg: HotwordDetected, wakeword_id: str) -> None:
        async with self.locked(msg.site_id) as state:
            sid = msg.session_id or f"{msg.site_id}-{wakeword_id}-{uuid.uuid4()}"
            if sid in self._by_id:
                return  # a redelivered wake for a session that already runs
            if state.active is not None:
                # A wake word on a busy site aborts what runs there (and cancels its confirmation).
                await self._end(state, state.active, "abortedByUser", start_next=False)
            s = Session(id=sid, site=msg.site_id, custom_data=msg.custom_data or wakeword_id, lang=msg.lang)
            await self._start(state, s)

    async def on_start_session(self, msg: StartSession) -> None:
        async with self.locked(msg.site_id) as state:
            init = msg.init
            s = Session(id=msg.session_id or str(uuid.uuid4()), site=msg.site_id, custom_data=msg.custom_data,
                        lang=msg.lang, kind="notification" if init.type == "notification" else "action",
                        init_text=init.text, send_intent_not_recognized=init.send_intent_not_recognized,
                        intent_filter=tuple(init.intent_filter) if init.intent_filter is not None else None)
            if s.id in self._by_id:
                return
            if state.active is None:
                await self._start(state, s)
            elif s.kind == "notification" or init.can_be_enqueued:
                state.queue.append(s)
                self._by_id[s.id] = s
                await self._pub(T.SESSION_QUEUED, compact(sessionId=s.id, siteId=s.site, customData=s.custom_data))
            else:
                # canBeEnqueued=false on a busy site: drop it (Snips); never abort a running dialogue for an app.
                await self._pub(T.ERROR, compact(siteId=s.site, sessionId=s.id, error="site busy",
                                                 context="startSession"))

    async def on_continue(self, msg: ContinueSession) -> None:
        s = self.session(msg.session_id)
        if s is None:
            log.info("continueSession for an unknown session", session_id=msg.session_id)
            return
        async with self.locked(s.site) as state:
            if not self._owned_by_external(s, msg.site_id, "continueSession") or state.active is not s:
                return
            self.timers.cancel(s, "phase")
            s.step += 1
            s.external = True
            if msg.custom_data is not None:
                s.custom_data = msg.custom_data
            if msg.lang is not None:
                s.lang = msg.lang
            # Hermes semantics: the filter is replaced; null means every intent.
            s.intent_filter = tuple(msg.intent_filter) if msg.intent_filter is not None else None
            s.send_intent_not_recognized = msg.send_intent_not_recognized
            if msg.text:
                await self._say(s, msg.text, say_id=f"{s.id}:{s.step}", after=After.LISTEN)
            else:
                await self._listen(s)

    async def on_end(self, msg: EndSession) -> None:
        s = self.session(msg.session_id)
        if s is None:
            log.info("endSession for an unknown session", session_id=msg.session_id)
            return
        async with self.locked(s.site) as state:
            if not self._owned_by_external(s, msg.site_id, "endSession"):
                return
            if msg.custom_data is not None:
                s.custom_data = msg.custom_data
            if s is not state.active:  # a queued session ended before it started
                with contextlib.suppress(ValueError):
                    state.queue.remove(s)
                self._by_id.pop(s.id, None)
                return
            if msg.text:
                await self._say(s, msg.text, say_id=f"{s.id}:end", after=After.END)
            else:
                await self._end(state, s, "nominal")

    def _owned_by_external(self, s: Session, site: str | None, what: str) -> bool:
        """External apps steer a session only while it waits for them, and never a confirmation dialogue."""
        if site is not None and site != s.site:
            self._drop("site_mismatch", what, s.id)
            return False
        if s.confirmation_id is not None:
            log.warning("external app tried to steer a confirmation dialogue; ignored", session_id=s.id, kind=what)
            return False
        # A queued session (still STARTING) may be ended by the app that started it, not continued.
        return s.phase == Phase.WAIT_HANDLER or (s.phase == Phase.STARTING and what == "endSession")

    async def on_say_finished(self, msg: SayFinished) -> None:
        async with self.locked(msg.site_id) as state:
            s = state.active
            if s is None or s.phase != Phase.SPEAKING or msg.id != s.say_id:
                return
            if msg.session_id is not None and msg.session_id != s.id:
                self._drop("session_mismatch", "sayFinished", msg.session_id)
                return
            await self._after_say(state, s)

    async def on_configure(self, msg: Configure) -> None:
        async with self.locked(msg.site_id) as state:
            for item in msg.intents:
                if item.enable:
                    state.disabled_intents.discard(item.intent_id)
                else:
                    state.disabled_intents.add(item.intent_id)

    # --- inbound: speech -----------------------------------------------------------------------------

    async def on_text(self, msg: TextCaptured, inbound: Any = None) -> None:
        async with self.locked(msg.site_id) as state:
            s = self.session(msg.session_id)
            if s is None or s.site != msg.site_id or state.active is not s:
                await self._refuse_text(state, msg, s)
                return
            if s.awaiting_answer:
                await self._answer(state, s, msg, inbound)
            elif s.phase == Phase.LISTENING:
                await self._recognize(state, s, msg, inbound)
            else:
                self._drop("not_listening", "textCaptured", s.id)

    async def _refuse_text(self, state: SiteState, msg: TextCaptured, s: Session | None) -> None:
        """Text that is not for the listening session on its own site. Audited when a confirmation is at stake."""
        target: str | None = None
        why = "unknown_session"
        if s is not None and s.confirmation_id:
            target, why = s.confirmation_id, "wrong_site"
        elif state.active is not None and state.active.confirmation_id:
            target, why = state.active.confirmation_id, "wrong_session"
        elif (old := self._recent.get(msg.session_id)) is not None and old[1]:
            target, why = old[1], "session_ended"
        self._drop(why, "textCaptured", msg.session_id)
        if target is not None:
            self.stats["refused"] += 1
            await self._deps.record_event(
                "security.confirmation_refused", actor=f"voice:{msg.site_id}/{msg.session_id}", subject=target,
                correlation_id=target, body={"reason": why, "site": msg.site_id, "session_id": msg.session_id,
                                             "text": msg.text[:200]})

    def _drop(self, reason: str, what: str, session_id: str | None) -> None:
        self.stats["dropped"] += 1
        self._deps.count_rejected(f"voice_{reason}")
        log.info("hermes message dropped", reason=reason, kind=what, session_id=session_id)

    async def _understand(self, text: str, site: str, intent_filter: tuple[str, ...] | None) -> Understanding | None:
        service = self._deps.services.understanding
        if service is None:
            log.error("no understanding service; cannot recognise intents")
            return None
        return await service.understand(text, site=site, intent_filter=intent_filter)

    def _recognized(self, u: Understanding | None, state: SiteState, s: Session, minimum: float) -> bool:
        if u is None or u.intent in NOT_RECOGNIZED or u.confidence < minimum or u.intent in state.disabled_intents:
            return False
        return s.intent_filter is None or u.intent in s.intent_filter or s.confirmation_id is not None

    async def _publish_intent(self, s: Session, u: Understanding, msg: TextCaptured) -> None:
        body = intent_payload(text=msg.text, intent=u.intent, confidence=u.confidence, site=s.site, session_id=s.id,
                              custom_data=s.custom_data, slots=u.slots, tokens=msg.flat_tokens() or None,
                              asr_confidence=msg.likelihood, lang=s.lang)
        await self._pub(T.INTENT_PARSED, body)
        if (name := safe_intent_name(u.intent)) is not None:
            await self._pub(T.intent(name), body)

    async def _not_recognized(self, state: SiteState, s: Session, text: str) -> None:
        await self._pub(T.NLU_NOT_RECOGNIZED, compact(input=text, siteId=s.site, sessionId=s.id,
                                                      customData=s.custom_data))
        if s.send_intent_not_recognized:
            await self._pub(T.DM_INTENT_NOT_RECOGNIZED, compact(sessionId=s.id, siteId=s.site, input=text,
                                                                customData=s.custom_data))
            await self._wait_handler(s)
        elif s.external:
            await self._end(state, s, "intentNotRecognized")
        else:
            await self._say(s, replies.NOT_UNDERSTOOD, say_id=f"{s.id}:{s.step}", after=After.END,
                            end_reason="intentNotRecognized")

    async def _wait_handler(self, s: Session) -> None:
        gen = s.advance(Phase.WAIT_HANDLER)
        self.timers.arm(s, "phase", self._cfg.handler_timeout_s, lambda: self._on_timeout(s, gen))

    async def _recognize(self, state: SiteState, s: Session, msg: TextCaptured, inbound: Any) -> None:
        s.advance(Phase.RECOGNIZING)
        s.step += 1
        self.timers.cancel(s, "phase")
        await self._pub(T.STOP_LISTENING, {"siteId": s.site, "sessionId": s.id})
        u = None
        if msg.likelihood >= self._cfg.min_asr_likelihood:
            u = await self._understand(msg.text, s.site, s.intent_filter)
        if not self._recognized(u, state, s, MIN_CONFIDENCE):
            await self._not_recognized(state, s, msg.text)
            return
        assert u is not None
        await self._publish_intent(s, u, msg)
        if s.external or u.intent in self._cfg.external_intents:
            # An external Hermes app answers with continueSession/endSession within handler_timeout_s.
            s.external = True
            await self._wait_handler(s)
            return
        await self._act(state, s, u, inbound)

    async def _act(self, state: SiteState, s: Session, u: Understanding, inbound: Any) -> None:
        service = self._deps.services.understanding
        principal = Principal(kind="voice", site=s.site, session_id=s.id)
        async with self._deps.transaction(inbound) as conn:
            outcome = await service.act(u, principal=principal, request_id=f"{s.id}:{s.step}", conn=conn)
            if outcome.confirmation_id:
                # The dialogue row commits with the confirmation row (and the inbox row): after a crash, both
                # or neither exist, so the question is re-asked or the request is handled afresh.
                await self._deps.sessions.open(conn, site=s.site, session_id=s.id,
                                               confirmation_id=outcome.confirmation_id,
                                               custom_data=json.dumps({"pendingAction": outcome.confirmation_id}),
                                               lang=s.lang)
        if outcome.confirmation_id:
            await self._ask(s, outcome.confirmation_id, outcome.confirmation_prompt or outcome.text)
        elif outcome.text:
            await self._say(s, outcome.text, say_id=f"{s.id}:{s.step}",
                            after=After.END if outcome.end_session else After.LISTEN)
        else:
            await self._end(state, s, "nominal")

    # --- the hazard confirmation dialogue --------------------------------------------------------------

    async def _ask(self, s: Session, confirmation_id: str, prompt: str, *, prefix: str = "",
                   say_suffix: str = "q1") -> None:
        s.confirmation_id = confirmation_id
        s.custom_data = json.dumps({"pendingAction": confirmation_id})
        s.prompt = prompt
        s.durable = True
        self._by_confirmation[confirmation_id] = s
        service = self._deps.services.confirmations
        if service is not None and (c := await service.get(confirmation_id)) is not None:
            s.confirmation_level = c.level
        text = prefix + prompt + (replies.ASK_PIN if s.confirmation_level == "pin" else "")
        await self._say(s, text, say_id=f"{confirmation_id}:{say_suffix}", after=After.CONFIRM)

    async def _answer(self, state: SiteState, s: Session, msg: TextCaptured, inbound: Any) -> None:
        assert s.confirmation_id is not None
        self.timers.cancel(s, "phase")
        await self._pub(T.STOP_LISTENING, {"siteId": s.site, "sessionId": s.id})
        s.step += 1
        principal = Principal(kind="voice", site=s.site, session_id=s.id)
        service = self._deps.services.confirmations
        if service is None:
            await self._say(s, replies.UNAVAILABLE, say_id=f"{s.id}:{s.step}", after=After.END, end_reason="error")
            return
        if s.confirmation_level == "pin":
            pin = replies.spoken_pin(msg.text) if msg.likelihood >= self._cfg.min_asr_likelihood else None
            if pin is None:
                await self._unclear(state, s)
                return
            await self._approve(state, s, principal, pin=pin)
            return
        u = None
        if msg.likelihood >= self._cfg.min_asr_likelihood:
            u = await self._understand(msg.text, s.site, CONFIRM_INTENTS)
        if u is None or u.intent not in CONFIRM_INTENTS or u.confidence < MIN_CONFIRM_CONFIDENCE:
            await self._unclear(state, s)
            return
        await self._publish_intent(s, u, msg)
        if u.intent == "ConfirmYes":
            await self._approve(state, s, principal, pin=None)
            return
        s.answered = True
        try:
            await service.cancel(s.confirmation_id, principal=principal)
        except ConfirmationError as exc:
            log.info("cancel refused", confirmation_id=s.confirmation_id, reason=exc.reason)
        await self._say(s, replies.CANCELLED, say_id=f"{s.confirmation_id}:no", after=After.END)

    async def _unclear(self, state: SiteState, s: Session) -> None:
        """Re-ask once; a second unclear answer cancels (hermes-voice.md §6.3 step 3)."""
        assert s.confirmation_id is not None
        if s.reprompts < 1:
            s.reprompts += 1
            await self._ask(s, s.confirmation_id, s.prompt or "", prefix=replies.ASK_AGAIN,
                            say_suffix=f"u{s.reprompts}")
            return
        await self._pub(T.NLU_NOT_RECOGNIZED, compact(siteId=s.site, sessionId=s.id, customData=s.custom_data))
        await self._end(state, s, "intentNotRecognized")

    async def _approve(self, state: SiteState, s: Session, principal: Principal, *, pin: str | None) -> None:
        assert s.confirmation_id is not None
        s.answered = True
        gen = s.advance(Phase.WAIT_RESULT)
        try:
            confirmation = await self._deps.services.confirmations.approve(s.confirmation_id, principal=principal,
                                                                             pin=pin)
        except ConfirmationError as exc:
            await self._refused(state, s, exc)
            return
        self.timers.arm(s, "phase", RESULT_GRACE_S, lambda: self._on_result_timeout(s, gen))
        if confirmation.state in ("done", "failed"):
            await self._say_result(s, confirmation)

    async def _refused(self, state: SiteState, s: Session, exc: ConfirmationError) -> None:
        text, reason = {
            "expired": (replies.TOO_LATE, "timeout"),
            "locked_out": (replies.LOCKED_OUT, "error"),
            "pin_wrong": (replies.WRONG_PIN, "error"),
            "pin_required": (replies.PIN_ELSEWHERE, "error"),
        }.get(exc.reason, (replies.UNAVAILABLE, "error"))
        log.info("approval refused", confirmation_id=s.confirmation_id, reason=exc.reason)
        await self._say(s, text, say_id=f"{s.confirmation_id}:refused", after=After.END, end_reason=reason)

    async def _on_result_timeout(self, s: Session, gen: int) -> None:
        async with self.locked(s.site):
            if s.gen == gen and s.phase == Phase.WAIT_RESULT:
                await self._say(s, replies.NOT_CONFIRMED_YET, say_id=f"{s.confirmation_id}:late", after=After.END,
                                end_reason="error")

    def _label(self, device: str) -> str:
        devices = self._deps.services.devices
        info = devices.get(device) if devices is not None else None
        return info.label if info is not None else device.replace("_", " ")

    async def _say_result(self, s: Session, c: Confirmation) -> None:
        label = self._label(c.action.device)
        if c.state == "done":
            await self._say(s, replies.done_text(c.action, label), say_id=f"{c.id}:done", after=After.END)
        else:
            await self._say(s, replies.failed_text(c.action, label), say_id=f"{c.id}:failed", after=After.END,
                            end_reason="error")

    async def on_confirmation(self, c: Confirmation) -> None:
        """A committed transition of any confirmation (the service's subscription)."""
        s = self._by_confirmation.get(c.id)
        if s is None:
            return
        async with self.locked(s.site) as state:
            if s.phase == Phase.ENDED or state.active is not s:
                return
            if c.state in ("done", "failed") and s.phase == Phase.WAIT_RESULT:
                await self._say_result(s, c)
            elif c.state in ("expired", "cancelled") and not s.answered:
                # Expired by the service's sweeper, or cancelled from the panel/CLI while we were asking.
                s.answered = True
                await self._end(state, s, "timeout" if c.state == "expired" else "nominal")

    # --- restart recovery ----------------------------------------------------------------------------

    async def recover(self, rows: list[OpenSession], allowed: set[str]) -> list[Session]:
        """Rebuild the dialogues that hold a confirmation. Returns those whose question must be asked again."""
        service = self._deps.services.confirmations
        reask: list[Session] = []
        for row in rows:
            if row.site not in allowed:
                continue
            async with self.locked(row.site) as state:
                s = Session(id=row.session_id, site=row.site, custom_data=row.custom_data, lang=row.lang,
                            confirmation_id=row.confirmation_id, durable=True, restored=True, answered=True,
                            step=self._epoch)
                # Registered before reading the confirmation, so a transition racing this read is not lost.
                state.active = s
                self._register(s)
                self.timers.arm(s, "cap", self._cfg.session_timeout_s, lambda s=s: self._on_cap(s))
                c = await service.get(row.confirmation_id) if service is not None else None
                if c is None:
                    await self._end(state, s, "error")
                    continue
                s.prompt, s.confirmation_level = c.prompt, c.level
                if c.state == "pending" and not row.deadline_passed:
                    s.answered = False
                    s.advance(Phase.LISTENING)  # a queued answer may arrive before the question is re-asked
                    reask.append(s)
                elif c.state == "pending" or c.state == "expired":
                    s.answered = False
                    await self._record_event("voice.confirmation_timeout", s, {"confirmation_id": c.id,
                                                                                "after_restart": True})
                    await self._end(state, s, "timeout")
                elif c.state in ("confirmed", "executing"):
                    gen = s.advance(Phase.WAIT_RESULT)  # never re-sent: the service reconciles with the device
                    self.timers.arm(s, "phase", RESULT_GRACE_S, lambda s=s, gen=gen: self._on_result_timeout(s, gen))
                elif c.state in ("done", "failed"):
                    s.advance(Phase.WAIT_RESULT)
                    await self._say_result(s, c)
                else:  # cancelled
                    await self._end(state, s, "nominal")
        return reask

    async def reask(self, sessions: list[Session]) -> None:
        for s in sessions:
            async with self.locked(s.site) as state:
                if state.active is not s or not s.awaiting_answer or s.confirmation_id is None:
                    continue  # an answer the broker had queued was taken meanwhile
                s.reprompts = 0
                await self._ask(s, s.confirmation_id, s.prompt or "", prefix=replies.INTERRUPTED, say_suffix="r1")

    async def _record_event(self, kind: str, s: Session, body: dict[str, Any]) -> None:
        await self._deps.record_event(kind, actor=f"voice:{s.site}/{s.id}", subject=s.site,
                                      correlation_id=s.confirmation_id, body=body)

    # --- NLU service role (hermes/nlu/query) ---------------------------------------------------------

    async def on_nlu_query(self, msg: NluQuery) -> None:
        """Text-only clients: recognise and publish; the DM that asked decides what happens next."""
        filt = tuple(msg.intent_filter) if msg.intent_filter is not None else None
        u = await self._understand(msg.input, msg.site_id, filt)
        if u is None or u.intent in NOT_RECOGNIZED or u.confidence < MIN_CONFIDENCE:
            await self._pub(T.NLU_NOT_RECOGNIZED, compact(input=msg.input, siteId=msg.site_id, id=msg.id,
                                                          sessionId=msg.session_id, customData=msg.custom_data))
            return
        body = intent_payload(text=msg.input, intent=u.intent, confidence=u.confidence, site=msg.site_id,
                              session_id=msg.session_id, custom_data=msg.custom_data, slots=u.slots, tokens=None,
                              asr_confidence=None, query_id=msg.id)
        await self._pub(T.INTENT_PARSED, body)
        if (name := safe_intent_name(u.intent)) is not None:
            await self._pub(T.intent(name), body)

