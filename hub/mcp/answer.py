"""Answering a request through MCP tools: what the understanding service calls when the frontier model chose
an MCP tool (or, with no model, when ``ToolRoute.match`` found one). Kept here so the understanding service
needs only a few lines to use it, and knows nothing of MCP.

Device tools never come here: ``device_action`` / ``device_state`` calls keep going through the understanding
service and the hazard gate, and MCP tools never shadow those names (see ``handlers.mcp``).
"""

from __future__ import annotations

import json
from typing import Any

import structlog

from hub.contracts import Outcome
from hub.frontier import FrontierError
from hub.mcp.tools import ToolCallError

log = structlog.get_logger("kitt.mcp")

# Tool calls carried out for one model reply: a model asking for more is cut off, not obeyed without bound.
MAX_CALLS = 3


def _speakable(exc: ToolCallError) -> str:
    return f"Sorry, I couldn't get that: {exc}."


async def answer_tool_calls(tools: Any, frontier: Any, messages: list[dict[str, Any]], reply: Any, *,
                            request_id: str) -> Outcome | None:
    """Carry out the MCP tool calls of ``reply`` and answer; None when it has none (not ours to answer).

    The results go back to the model once, without tools, for a spoken sentence; if that round fails, the
    tools' own text is the answer. A tool that fails, times out or whose server died answers with a clear
    sentence naming the problem — the request never hangs past the tool's timeout.
    """
    calls = [c for c in reply.tool_calls if tools.has(c.name)][:MAX_CALLS]
    if not calls:
        return None
    results: list[tuple[Any, str]] = []
    errors: list[ToolCallError] = []
    for c in calls:
        try:
            text = await tools.call(c.name, c.arguments, correlation_id=request_id, actor="understanding")
        except ToolCallError as exc:
            errors.append(exc)
            text = f"error ({exc.kind}): {exc}"
        results.append((c, text))
    names = [c.name for c in calls]
    if len(errors) == len(calls):
        return Outcome(text=_speakable(errors[0]), route="tool", intent="tool",
                       data={"tools": names, "error": errors[0].kind})
    followup = [*messages, {
        "role": "assistant", "content": reply.text or None,
        "tool_calls": [{"id": c.id, "type": "function",
                        "function": {"name": c.name, "arguments": json.dumps(c.arguments)}} for c, _ in results],
    }, *({"role": "tool", "tool_call_id": c.id, "content": text} for c, text in results)]
    try:
        final = await frontier.chat(followup)
        text = final.text
    except FrontierError as exc:  # the model is optional for the last step: the tools' answer still stands
        log.warning("frontier follow-up failed; answering with the tool's text", error=str(exc))
        text = ""
    if not text:
        text = " ".join(t for _, t in results if not t.startswith("error ("))
    return Outcome(text=text, route="tool", intent="tool",
                   data={"tools": names, **({"error": errors[0].kind} if errors else {})})


async def answer_by_match(tools: Any, text: str, *, request_id: str) -> Outcome | None:
    """Without a model: a tool that needs no arguments and whose name the request spells out (see
    ``ToolRoute.match``), called directly. None when nothing matches."""
    spec = await tools.match(text)
    if spec is None:
        return None
    try:
        answer = await tools.call(spec.name, {}, correlation_id=request_id, actor="understanding")
    except ToolCallError as exc:
        return Outcome(text=_speakable(exc), route="tool", intent="tool", data={"tools": [spec.name],
                                                                               "error": exc.kind})
    return Outcome(text=answer, route="tool", intent="tool", data={"tools": [spec.name]})
