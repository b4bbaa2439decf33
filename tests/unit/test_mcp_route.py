"""The tool route without processes: ``ToolRoute`` / ``ServerConnection`` over an in-memory session factory,
and the answer helpers the understanding service calls (no I/O)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from mcp import MCPError
from mcp import types as mcp_types

from hub.config import McpServer
from hub.frontier import FrontierError, FrontierReply, ToolCall
from hub.mcp.answer import answer_by_match, answer_tool_calls
from hub.mcp.client import AUDIT_ARGUMENTS_MAX, McpMetrics, ToolRoute, result_text
from hub.mcp.tools import ToolCallError, ToolSpec
from hub.metrics import Metrics


def tool(name: str, description: str = "", required: tuple[str, ...] = (), **props: Any) -> Any:
    schema = {"type": "object", "title": f"{name}Arguments", "properties": props, "required": list(required)}
    return mcp_types.Tool(name=name, description=description, input_schema=schema)


def text_result(text: str, *, error: bool = False) -> Any:
    return mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text=text)], is_error=error)


@dataclass
class FakeSession:
    tools: list[Any]
    answers: dict[str, Any] = field(default_factory=dict)  # tool → result, or an exception to raise
    calls: list[tuple[str, dict[str, Any], float | None]] = field(default_factory=list)
    hang: set[str] = field(default_factory=set)

    async def list_tools(self, *, cursor: str | None = None) -> Any:
        return SimpleNamespace(tools=self.tools, next_cursor=None)

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None,
                        read_timeout_seconds: float | None = None) -> Any:
        self.calls.append((name, dict(arguments or {}), read_timeout_seconds))
        if name in self.hang:
            await asyncio.Event().wait()
        answer = self.answers.get(name, text_result(f"{name} ok"))
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Factory:
    """Per server: a queue of sessions (or exceptions) handed out one per connect, the last one repeated."""

    def __init__(self, plan: dict[str, list[Any]]) -> None:
        self.plan = plan
        self.connects: dict[str, int] = {}
        self.closed: dict[str, int] = {}

    def __call__(self, name: str, settings: McpServer) -> Any:
        @asynccontextmanager
        async def connect() -> AsyncIterator[Any]:
            self.connects[name] = self.connects.get(name, 0) + 1
            queue = self.plan[name]
            item = queue.pop(0) if len(queue) > 1 else queue[0]
            if isinstance(item, BaseException):
                raise item
            try:
                yield item
            finally:
                self.closed[name] = self.closed.get(name, 0) + 1

        return connect()


class Audit:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def __call__(self, kind: str, **kw: Any) -> int:
        self.events.append({"kind": kind, **kw})
        return len(self.events)


def server(timeout_s: float = 2.0) -> McpServer:
    return McpServer(command=("unused",), timeout_s=timeout_s)


_OPEN_ROUTES: list[ToolRoute] = []


@pytest.fixture(autouse=True)
async def _stop_routes() -> AsyncIterator[None]:
    """A route whose test failed before ``stop()`` must not keep reconnecting (and logging) after the test."""
    yield
    while _OPEN_ROUTES:
        await _OPEN_ROUTES.pop().stop()


def route_for(plan: dict[str, list[Any]], *, reserved: tuple[str, ...] = (), timeout_s: float = 2.0,
              metrics: Metrics | None = None) -> tuple[ToolRoute, Factory, Audit]:
    factory, audit = Factory(plan), Audit()
    route = ToolRoute({name: server(timeout_s) for name in plan}, audit=audit, reserved=reserved,
                      client_factory=factory, backoff_base_s=0.001, backoff_cap_s=0.01,
                      metrics=McpMetrics(metrics) if metrics is not None else None)
    _OPEN_ROUTES.append(route)
    return route, factory, audit


# --- specs and names -----------------------------------------------------------------------------------


def test_a_tool_becomes_an_openai_function_tool() -> None:
    spec = ToolSpec(name="get_weather", description="Weather for a city",
                    input_schema={"title": "get_weatherArguments", "type": "object",
                                  "properties": {"city": {"type": "string"}}, "required": ["city"]},
                    server="w", remote_name="get_weather")
    assert spec.openai() == {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    assert spec.required == ("city",)
    bare = ToolSpec(name="t", description="", input_schema={}, server="w", remote_name="t")
    assert bare.openai()["function"]["parameters"] == {"type": "object", "properties": {}}


async def test_shared_and_reserved_names_are_prefixed_with_the_server() -> None:
    route, _, _ = route_for({"a": [FakeSession([tool("search"), tool("device_action"), tool("odd.name")])],
                             "b": [FakeSession([tool("search")])]}, reserved=("device_action",))
    names = {s.name: (s.server, s.remote_name) for s in await route.list_tools()}
    assert names == {"a__search": ("a", "search"), "b__search": ("b", "search"),
                     "a__device_action": ("a", "device_action"), "odd_name": ("a", "odd.name")}
    assert [t["function"]["name"] for t in await route.openai_tools()] == list(names)
    await route.stop()


async def test_match_is_conservative() -> None:
    session = FakeSession([tool("get_weather", required=("city",), city={"type": "string"}),
                           tool("house_energy_report"), tool("getMailboxStatus"), tool("list_lights")])
    route, _, _ = route_for({"s": [session]})
    assert await route.match("what's the energy report for the house") is not None
    assert (await route.match("what's the energy report for the house")).name == "house_energy_report"
    assert (await route.match("is there anything in the mailbox? status please")).name == "getMailboxStatus"
    assert await route.match("what's the weather") is None          # needs an argument: the model's job
    assert await route.match("how much energy did we use") is None  # not every word of the name
    assert await route.match("") is None
    await route.stop()


async def test_match_refuses_when_two_tools_qualify() -> None:
    route, _, _ = route_for({"s": [FakeSession([tool("lights"), tool("list_lights")])]})
    assert await route.match("the lights") is None
    await route.stop()


# --- calls --------------------------------------------------------------------------------------------


async def test_a_call_answers_with_text_audits_and_counts() -> None:
    metrics = Metrics()
    session = FakeSession([tool("get_weather")], answers={"get_weather": text_result("sunny")})
    route, factory, audit = route_for({"w": [session]}, metrics=metrics)
    assert await route.call("get_weather", {"city": "Paris"}, correlation_id="r1") == "sunny"
    assert session.calls[0][:2] == ("get_weather", {"city": "Paris"})
    assert session.calls[0][2] is not None and 0 < session.calls[0][2] <= 2.0  # every call has a timeout
    [event] = audit.events
    assert (event["kind"], event["subject"], event["correlation_id"]) == ("mcp.tool_call", "w/get_weather", "r1")
    assert event["body"]["status"] == "ok" and event["body"]["arguments"] == '{"city": "Paris"}'
    assert 'kitt_mcp_tool_calls_total{server="w",status="ok",tool="get_weather"} 1.0' in metrics.render().decode()
    assert factory.connects == {"w": 1}
    await route.stop()
    assert factory.closed == {"w": 1}


async def test_tool_errors_unknown_tools_and_long_arguments() -> None:
    session = FakeSession([tool("broken")], answers={"broken": text_result("no such city", error=True)})
    route, _, audit = route_for({"w": [session]})
    with pytest.raises(ToolCallError) as failed:
        await route.call("broken", {"city": "x" * 2000})
    assert failed.value.kind == "tool_error" and "no such city" in str(failed.value)
    assert len(audit.events[0]["body"]["arguments"]) == AUDIT_ARGUMENTS_MAX + 1
    with pytest.raises(ToolCallError) as unknown:
        await route.call("nope", {})
    assert unknown.value.kind == "unknown_tool"
    assert [e["body"]["status"] for e in audit.events] == ["tool_error", "unknown_tool"]
    await route.stop()


async def test_a_call_that_does_not_answer_times_out() -> None:
    session = FakeSession([tool("slow")], hang={"slow"})
    route, _, audit = route_for({"w": [session]})
    with pytest.raises(ToolCallError) as failed:
        await route.call("slow", {}, timeout=0.05)
    assert failed.value.kind == "timeout" and "within 0.05 s" in str(failed.value)
    assert audit.events[-1]["body"]["status"] == "timeout"
    await route.stop()


async def test_an_sdk_timeout_is_a_timeout() -> None:
    session = FakeSession([tool("slow")], answers={"slow": MCPError(mcp_types.REQUEST_TIMEOUT, "timed out")})
    route, _, _ = route_for({"w": [session]})
    with pytest.raises(ToolCallError) as failed:
        await route.call("slow", {})
    assert failed.value.kind == "timeout"
    await route.stop()


async def test_a_server_that_dies_mid_call_fails_that_call_and_is_reconnected() -> None:
    dying = FakeSession([tool("whoami")], answers={"whoami": MCPError(mcp_types.CONNECTION_CLOSED, "closed")})
    fresh = FakeSession([tool("whoami")], answers={"whoami": text_result("second")})
    route, factory, audit = route_for({"w": [dying, fresh]}, metrics=Metrics())
    with pytest.raises(ToolCallError) as failed:
        await route.call("whoami", {})
    assert failed.value.kind == "server_down" and "stopped during the call" in str(failed.value)
    assert await route.call("whoami", {}) == "second"
    assert factory.connects["w"] == 2 and factory.closed["w"] == 1
    assert route.status()["w"]["connects"] == 2
    assert [e["body"]["status"] for e in audit.events] == ["server_down", "ok"]
    await route.stop()


async def test_a_server_that_cannot_start_is_unavailable_and_retried_with_backoff() -> None:
    route, factory, _ = route_for({"w": [OSError("no such file"), OSError("no such file"),
                                         FakeSession([tool("t")])]})
    with pytest.raises(ToolCallError) as first:
        await route.call("t", {})
    # The listing found nothing, so the tool is unknown; the reason is in the status and the log.
    assert first.value.kind == "unknown_tool"
    assert "no such file" in (route.status()["w"]["error"] or "")
    conn = route.connections["w"]
    async with asyncio.timeout(5):  # a bound against hanging; the supervisor retries with a tiny backoff here
        while conn.state != "up":
            await asyncio.sleep(0.001)
    assert await route.call("t", {}) == "t ok"
    assert factory.connects["w"] == 3
    await route.stop()


async def test_one_broken_server_does_not_hide_the_others() -> None:
    route, _, _ = route_for({"bad": [OSError("boom")], "good": [FakeSession([tool("ok_tool")])]})
    assert [s.name for s in await route.list_tools()] == ["ok_tool"]
    assert route.status()["bad"]["state"] != "up"
    await route.stop()


async def test_nothing_starts_before_first_use_and_stop_is_clean() -> None:
    route, factory, _ = route_for({"w": [FakeSession([tool("t")])]})
    await route.start()
    assert factory.connects == {} and route.status()["w"]["state"] == "idle"
    await route.stop()
    with pytest.raises(ToolCallError) as stopped:
        await route.connections["w"].ensure(1.0)
    assert stopped.value.kind == "unavailable"


def test_result_text_joins_text_and_falls_back_to_structured_content() -> None:
    two = mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text="a"),
                                            mcp_types.TextContent(type="text", text="b")])
    assert result_text(two) == "a\nb"
    structured = mcp_types.CallToolResult(content=[], structured_content={"t": 21})
    assert result_text(structured) == '{"t": 21}'


# --- answering ---------------------------------------------------------------------------------------


class FakeTools:
    def __init__(self, answers: dict[str, Any], match: ToolSpec | None = None) -> None:
        self.answers = answers
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._match = match

    def has(self, name: str) -> bool:
        return name in self.answers

    async def call(self, name: str, arguments: dict[str, Any], **kw: Any) -> str:
        self.calls.append((name, arguments))
        answer = self.answers[name]
        if isinstance(answer, ToolCallError):
            raise answer
        return str(answer)

    async def match(self, text: str) -> ToolSpec | None:
        return self._match


class FakeFrontier:
    def __init__(self, text: str = "", fail: bool = False) -> None:
        self.text, self.fail = text, fail
        self.seen: list[list[dict[str, Any]]] = []

    async def chat(self, messages: list[dict[str, Any]], **kw: Any) -> FrontierReply:
        self.seen.append(messages)
        if self.fail:
            raise FrontierError("down")
        return FrontierReply(text=self.text)


QUESTION = [{"role": "user", "content": "weather in paris?"}]


def calling(*calls: tuple[str, dict[str, Any]]) -> FrontierReply:
    return FrontierReply(text="", tool_calls=tuple(ToolCall(id=f"c{i}", name=n, arguments=a)
                                                   for i, (n, a) in enumerate(calls)))


async def test_tool_results_go_back_to_the_model_for_the_answer() -> None:
    tools, frontier = FakeTools({"get_weather": "sunny"}), FakeFrontier("It is sunny.")
    out = await answer_tool_calls(tools, frontier, QUESTION, calling(("get_weather", {"city": "Paris"})),
                                  request_id="r")
    assert out is not None and (out.text, out.route) == ("It is sunny.", "tool")
    followup = frontier.seen[0]
    assert followup[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert followup[2] == {"role": "tool", "tool_call_id": "c0", "content": "sunny"}


async def test_without_the_follow_up_the_tool_text_is_the_answer() -> None:
    out = await answer_tool_calls(FakeTools({"get_weather": "sunny"}), FakeFrontier(fail=True), QUESTION,
                                  calling(("get_weather", {})), request_id="r")
    assert out is not None and out.text == "sunny"


async def test_a_failed_tool_answers_with_a_clear_sentence() -> None:
    err = ToolCallError("server_down", "the tool server 'w' stopped during the call to 'get_weather'")
    frontier = FakeFrontier("never asked")
    out = await answer_tool_calls(FakeTools({"get_weather": err}), frontier, QUESTION, calling(("get_weather", {})),
                                  request_id="r")
    assert out is not None and out.text == f"Sorry, I couldn't get that: {err}."
    assert out.data["error"] == "server_down" and frontier.seen == []


async def test_calls_that_are_not_mcp_tools_are_not_ours() -> None:
    out = await answer_tool_calls(FakeTools({}), FakeFrontier(), QUESTION, calling(("device_action", {})),
                                  request_id="r")
    assert out is None


async def test_tool_calls_per_reply_are_bounded() -> None:
    tools = FakeTools({"t": "x"})
    await answer_tool_calls(tools, FakeFrontier("ok"), QUESTION, calling(*[("t", {})] * 10), request_id="r")
    assert len(tools.calls) == 3


async def test_a_matched_tool_is_called_without_a_model() -> None:
    spec = ToolSpec(name="house_energy_report", description="", input_schema={}, server="s",
                    remote_name="house_energy_report")
    tools = FakeTools({"house_energy_report": "12 kWh today"}, match=spec)
    out = await answer_by_match(tools, "energy report for the house", request_id="r")
    assert out is not None and (out.text, out.route) == ("12 kWh today", "tool")
    assert await answer_by_match(FakeTools({}), "anything", request_id="r") is None


async def test_a_server_in_backoff_is_not_waited_for_but_its_tools_stay_offered() -> None:
    dying = FakeSession([tool("whoami")], answers={"whoami": MCPError(mcp_types.CONNECTION_CLOSED, "closed")})
    factory, audit = Factory({"w": [dying, OSError("restart failed")]}), Audit()
    route = ToolRoute({"w": server(timeout_s=60)}, audit=audit, client_factory=factory, backoff_base_s=60,
                      backoff_cap_s=60)
    with pytest.raises(ToolCallError):
        await route.call("whoami", {})
    conn = route.connections["w"]
    async with asyncio.timeout(5):  # hang guards: with a 60 s backoff and timeout, waiting would trip them
        while conn.state != "backoff":
            await asyncio.sleep(0.001)
        assert [s.name for s in await route.list_tools()] == ["whoami"]
    await route.stop()
