"""The tool route's value types, without the MCP SDK (importing ``mcp`` costs ~0.4 s): what callers of
``services.tools`` need — the understanding service, the web layer — import from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from hub.errors import KittError

ErrorKind = Literal["unknown_tool", "unavailable", "timeout", "server_down", "tool_error"]


class ToolCallError(KittError):
    """A tool call that did not give an answer. ``kind`` is a short, metric-safe label:

    unknown_tool (no such tool), unavailable (the server could not be reached or started), timeout (no answer
    within the call's timeout), server_down (the server stopped during the call), tool_error (the tool ran and
    reported an error).
    """

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ToolSpec:
    """One tool as the hub offers it: ``name`` is unique across servers (``remote_name`` is the server's)."""

    name: str
    description: str
    input_schema: dict[str, Any]
    server: str
    remote_name: str

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(str(r) for r in self.input_schema.get("required") or ())

    def openai(self) -> dict[str, Any]:
        """The OpenAI function-tool form of this tool (what ``/chat/completions`` takes in ``tools``)."""
        schema = dict(self.input_schema) or {"type": "object", "properties": {}}
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        schema.pop("title", None)  # the SDK's generated "…Arguments" title says nothing to a model
        return {"type": "function", "function": {
            "name": self.name,
            "description": (self.description or self.remote_name)[:1024],
            "parameters": schema,
        }}


