"""The ``UnderstandingService``: understand (templates, then the embedding fallback), then act — answer from
tracked state, open a confirmation for hazards, enqueue commands for the rest, or ask the frontier (with the
semantic cache in front) for anything else.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import numpy as np

from handlers.understanding import speech
from handlers.understanding.pipeline import Pipeline
from handlers.understanding.resolve import ACTION_INTENTS, CONFIRM_INTENTS, STATE_INTENTS
from handlers.understanding.tools import to_action, tool_schemas
from hub.contracts import ConfirmationError, DeviceAction, Outcome, Principal, Understanding
from hub.frontier import FrontierClient, FrontierError
from hub.mcp.answer import answer_by_match, answer_tool_calls
from hub.plugins import PluginContext
from hub.tracing import span

CANT = "I can't do that yet."
SYSTEM_PROMPT = ("You are KITT, the voice of a house. Answer briefly, in one or two spoken sentences. "
                 "Use the tools to act on or read devices; never claim to have done something without a tool call.")


class Understander:
    def __init__(self, ctx: PluginContext, pipeline: Pipeline, frontier: FrontierClient | None) -> None:
        self._ctx = ctx
        self._pipeline = pipeline
        self._registry = pipeline.registry
        self._frontier = frontier
        self._sites = set(ctx.config.voice.sites)
        self._memory_tasks: set[asyncio.Task[None]] = set()

    # --- helpers ------------------------------------------------------------------------------------

    @property
    def _devices(self) -> Any:
        return self._ctx.services.devices

    def _site_area(self, site: str | None) -> str | None:
        if not site:
            return None
        area = site.replace("_", " ").lower()
        return area if area in self._registry.areas() or site in self._sites else None

    def _label(self, device: str) -> str:
        d = self._registry.get(device)
        return d.label if d is not None else device.replace("_", " ")

    async def _vector(self, text: str) -> np.ndarray | None:
        """The request's embedding (the embedder's LRU makes a second call for the same text free)."""
        embedder = self._ctx.services.embedder
        if embedder is None or not getattr(embedder, "ready", False):
            return None
        try:
            return await embedder.embed(text)
        except Exception as exc:  # the fallback is optional: a failed embedding is a miss, logged
            self._ctx.log.warning("embedding failed; templates only", error=str(exc))
            return None

    @asynccontextmanager
    async def _transaction(self, conn: asyncpg.Connection | None) -> AsyncIterator[asyncpg.Connection]:
        if conn is not None:
            yield conn
            return
        async with self._ctx.spine.transaction() as own:
            yield own

    # --- understand -----------------------------------------------------------------------------------

    async def understand(self, text: str, *, site: str | None = None,
                         intent_filter: tuple[str, ...] | None = None) -> Understanding:
        with span("understand") as s:
            u = await self._pipeline.understand(text, area=self._site_area(site), vector=self._vector,
                                                intent_filter=intent_filter)
            s.set_attribute("kitt.intent", u.intent)
            s.set_attribute("kitt.source", u.source)
        return u

    # --- act ------------------------------------------------------------------------------------------

    async def act(self, understanding: Understanding, *, principal: Principal, request_id: str,
                  conn: asyncpg.Connection | None = None) -> Outcome:
        started = time.perf_counter()
        with span("act", intent=understanding.intent) as s:
            outcome = await self._route(understanding, principal=principal, request_id=request_id, conn=conn)
            s.set_attribute("kitt.route", outcome.route)
        # One audit event per request (the research routine counts intents, routes and latency from it).
        body = {"intent": understanding.intent, "route": outcome.route, "source": understanding.source,
                "confidence": round(understanding.confidence, 3),
                "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
        await self._ctx.store.record_event("intent.recognized", actor="understanding", subject=principal.label,
                                           correlation_id=request_id, body=body, conn=conn)
        self._remember(understanding.text, outcome, principal)
        return outcome

    def _remember(self, text: str, outcome: Outcome, principal: Principal) -> None:
        """Store the turn in vector memory, off the request's path (its embedding is the LRU's by now)."""
        memory = self._ctx.services.memory
        if memory is None or outcome.route in ("refused",):
            return
        task = asyncio.create_task(self._remember_turn(memory, text, outcome, principal),
                                   name="kitt[understanding].remember")
        self._memory_tasks.add(task)
        task.add_done_callback(self._memory_tasks.discard)

    async def _remember_turn(self, memory: Any, text: str, outcome: Outcome, principal: Principal) -> None:
        vector = await self._vector(text)
        if vector is None:
            return
        try:
            await memory.remember(f"{text} → {outcome.text}", vector, site=principal.site or "-",
                                  user=principal.user)
        except Exception as exc:  # memory is derived and rebuildable; a failed upsert never fails a request
            self._ctx.log.warning("memory upsert failed", error=str(exc))

    async def drain(self) -> None:
        """Wait for memory writes still running (plugin stop)."""
        if self._memory_tasks:
            await asyncio.gather(*self._memory_tasks, return_exceptions=True)

    async def _route(self, u: Understanding, *, principal: Principal, request_id: str,
                     conn: asyncpg.Connection | None) -> Outcome:
        if u.intent in STATE_INTENTS:
            return self._answer_state(u)
        if u.intent in CONFIRM_INTENTS:
            return await self._answer_confirm(u, principal)
        if u.intent in ACTION_INTENTS:
            if not u.actions:
                return Outcome(text=u.slots.get("problem") or CANT, route="refused", intent=u.intent)
            return await self._do(u.actions, intent=u.intent, principal=principal, request_id=request_id, conn=conn,
                                  route="local")
        return await self._ask_frontier(u, principal=principal, request_id=request_id, conn=conn)

    async def _do(self, actions: tuple[DeviceAction, ...], *, intent: str | None, principal: Principal,
                  request_id: str, conn: asyncpg.Connection | None, route: str) -> Outcome:
        devices = self._devices
        if devices is None:
            return Outcome(text="I can't reach the devices right now.", route="refused", intent=intent)
        refusals: list[str] = []
        runnable: list[DeviceAction] = []
        for action in actions:
            reason = devices.validate(action)
            if reason:
                refusals.append(reason)
            else:
                runnable.append(action)
        hazardous = [a for a in runnable if devices.hazard_class(a)]
        plain = [a for a in runnable if not devices.hazard_class(a)]
        said: list[str] = []
        published = 0
        confirmation = None
        async with self._transaction(conn) as tx:
            for action in plain:
                key = f"cmd:{request_id}:{action.device}:{action.action}"
                if await devices.enqueue_command(tx, action, key=key, correlation_id=request_id) is not None:
                    published += 1
                said.append(speech.doing(action, self._label(action.device)))
            if hazardous:
                confirmation, refusal = await self._request_confirmation(hazardous[0], principal, request_id, tx)
                if refusal:
                    refusals.append(refusal)
            await self._ctx.store.record_event(
                "understanding.acted", actor="understanding", subject=principal.label, correlation_id=request_id,
                body={"intent": intent, "route": route, "commands": [a.describe() for a in plain],
                      "confirm": confirmation.id if confirmation else None, "refused": refusals}, conn=tx)
        parts = []
        if said:
            parts.append("OK, " + ", and ".join(said) + ".")
        parts.extend(refusals)
        if confirmation is not None:
            parts.append(confirmation.prompt)
            return Outcome(text=" ".join(parts), route="confirm", intent=intent, published=published,
                           confirmation_id=confirmation.id, confirmation_prompt=confirmation.prompt,
                           end_session=False, data={"level": confirmation.level})
        return Outcome(text=" ".join(parts) or CANT, route=route if published or said else "refused",
                       intent=intent, published=published)

    async def _request_confirmation(self, action: DeviceAction, principal: Principal, request_id: str,
                                    conn: asyncpg.Connection) -> tuple[Any, str | None]:
        confirmations = self._ctx.services.confirmations
        label = self._label(action.device)
        if confirmations is None:
            return None, (f"I can't {speech.verb_phrase(action, label)} without a way to confirm it, "
                          "so I won't do it.")
        hazard = self._devices.hazard_class(action)
        confirmation = await confirmations.request(action, hazard_class=hazard, principal=principal,
                                                   correlation_id=request_id, conn=conn)
        return confirmation, None

    def _answer_state(self, u: Understanding) -> Outcome:
        devices = self._devices
        if not u.devices:
            return Outcome(text=u.slots.get("problem") or "I don't know which device you mean.", route="state",
                           intent=u.intent)
        lines = []
        for name in u.devices:
            d = self._registry.get(name)
            assert d is not None
            state = devices.state(name) if devices is not None else None
            if u.intent == "HassClimateGetTemperature":
                lines.append(speech.temperature(d.label, d.info.area, state))
            elif u.slots.get("state"):
                lines.append(speech.answer_yes_no(d.kind, d.label, state, str(u.slots["state"])))
            else:
                lines.append(speech.describe(d.kind, d.label, state))
        return Outcome(text=" ".join(lines), route="state", intent=u.intent, data={"devices": list(u.devices)})

    async def _answer_confirm(self, u: Understanding, principal: Principal) -> Outcome:
        confirmations = self._ctx.services.confirmations
        pending = await confirmations.pending(site=principal.site) if confirmations is not None else []
        if not pending:
            return Outcome(text="There is nothing to confirm.", route="refused", intent=u.intent)
        latest = max(pending, key=lambda c: c.created_at)
        try:
            if u.intent == "ConfirmYes":
                done = await confirmations.approve(latest.id, principal=principal)
                text = f"OK, {speech.doing(done.action, self._label(done.action.device))}."
            else:
                await confirmations.cancel(latest.id, principal=principal)
                text = "OK, cancelled."
        except ConfirmationError as exc:
            return Outcome(text=str(exc), route="refused", intent=u.intent, confirmation_id=latest.id)
        return Outcome(text=text, route="confirm", intent=u.intent, confirmation_id=latest.id,
                       published=1 if u.intent == "ConfirmYes" else 0)

    async def _ask_frontier(self, u: Understanding, *, principal: Principal, request_id: str,
                            conn: asyncpg.Connection | None) -> Outcome:
        if self._frontier is None or not self._frontier.enabled:
            tools = self._ctx.services.tools  # MCP (handlers.mcp): a no-argument tool the request names
            if tools is not None and (out := await answer_by_match(tools, u.text, request_id=request_id)):
                return out
            return Outcome(text=CANT, route="unknown", intent=u.intent)
        vector = await self._vector(u.text)
        cache = self._ctx.services.cache
        if cache is not None and vector is not None:
            hit = await cache.lookup(u.text, vector)
            if hit is not None:
                return Outcome(text=hit.answer, route="cache", intent=u.intent, data={"cache": hit.kind})
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": u.text}]
        try:
            reply = await self._frontier.chat(messages, tools=tool_schemas(self._registry) + await self._mcp_tools())
        except FrontierError as exc:
            self._ctx.log.warning("frontier failed", error=str(exc))
            return Outcome(text="I can't answer that right now: my online assistant is unreachable.",
                           route="unknown", intent=u.intent, data={"error": str(exc)})
        if reply.tool_calls:
            if (answered := await self._answer_mcp(reply, messages, request_id)) is not None:
                return answered
            return await self._do_tools(reply, principal=principal, request_id=request_id, conn=conn)
        if not reply.text:
            return Outcome(text=CANT, route="unknown", intent=u.intent)
        if cache is not None and vector is not None:
            await cache.store(u.text, vector, reply.text, tags=("frontier",))
        return Outcome(text=reply.text, route="frontier", intent=u.intent)

    async def _mcp_tools(self) -> list[dict[str, Any]]:
        """The MCP servers' tools (``services.tools``, from handlers.mcp), offered beside the device tools."""
        tools = self._ctx.services.tools
        return await tools.openai_tools() if tools is not None else []

    async def _answer_mcp(self, reply: Any, messages: list[dict[str, Any]], request_id: str) -> Outcome | None:
        """MCP tool calls answered through ``services.tools``; None when the reply calls a device tool (those
        keep going through the hazard gate in ``_do_tools``) or no MCP tool."""
        tools = self._ctx.services.tools
        if tools is None or any(c.name in ("device_action", "device_state") for c in reply.tool_calls):
            return None
        return await answer_tool_calls(tools, self._frontier, messages, reply, request_id=request_id)

    async def _do_tools(self, reply: Any, *, principal: Principal, request_id: str,
                        conn: asyncpg.Connection | None) -> Outcome:
        actions = tuple(a for a in (to_action(c) for c in reply.tool_calls) if a is not None)
        asked = [c.arguments.get("device") for c in reply.tool_calls if c.name == "device_state"]
        known = tuple(str(n) for n in asked if isinstance(n, str) and n in self._registry)
        if actions:
            out = await self._do(actions, intent="tool", principal=principal, request_id=request_id, conn=conn,
                                 route="tool")
            return out
        if known:
            state = self._answer_state(Understanding(text="", intent="HassGetState", confidence=1.0, devices=known))
            return Outcome(text=state.text, route="tool", intent="HassGetState", data=state.data)
        return Outcome(text=reply.text or CANT, route="unknown", intent="tool")

    # --- answer ---------------------------------------------------------------------------------------

    @staticmethod
    def acts_locally(u: Understanding) -> bool:
        """Answered from the house alone (state, or device actions): quick enough to run inside a grouped
        spine block. Everything else may wait on the language model or on another transaction."""
        return u.intent in STATE_INTENTS or u.intent in ACTION_INTENTS

    async def respond(self, u: Understanding, *, site: str, user: str | None, request_id: str, actor: str,
                      started: float, conn: asyncpg.Connection | None = None) -> dict[str, Any]:
        """Act on an understanding (inside ``conn``'s transaction when given) and say what happened."""
        principal = Principal(kind="user", site=site, user=user or actor)
        outcome = await self.act(u, principal=principal, request_id=request_id or uuid.uuid4().hex, conn=conn)
        self._ctx.metrics.request_latency.labels(route=f"understanding.{outcome.route}").observe(
            time.perf_counter() - started)
        return {
            "text": outcome.text, "route": outcome.route, "intent": u.intent, "confidence": u.confidence,
            "source": u.source, "devices": list(u.devices), "published": outcome.published,
            "confirmation_id": outcome.confirmation_id, "confirmation_prompt": outcome.confirmation_prompt,
            "end_session": outcome.end_session,
        }
