"""The frontier client against the loopback OpenAI-compatible stub: answers, tool calls, timeout, breaker."""

from __future__ import annotations

import pytest

from hub.config import FrontierSection
from hub.frontier import CircuitBreaker, FrontierClient, FrontierError, FrontierUnavailable
from tests.support.frontier_stub import FrontierStub


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def settings(stub: FrontierStub, **kw) -> FrontierSection:
    return FrontierSection(base_url=stub.base_url, model="stub-model", api_key="k", **kw)


async def test_text_answer_and_tool_call_are_parsed() -> None:
    async with FrontierStub() as stub:
        client = FrontierClient(settings(stub))
        await client.start()
        try:
            reply = await client.chat([{"role": "user", "content": "hello"}])
            assert reply.text == "Stub answer: hello" and reply.tool_calls == ()
            stub.reply_with_tool("device_action", device="kitchen_light", action="turn_on")
            reply = await client.chat([{"role": "user", "content": "x"}], tools=[{"type": "function"}])
            [call] = reply.tool_calls
            assert (call.name, call.arguments) == ("device_action", {"device": "kitchen_light", "action": "turn_on"})
            assert stub.requests[-1]["tools"] == [{"type": "function"}] and stub.requests[-1]["model"] == "stub-model"
        finally:
            await client.stop()


async def test_timeout_is_an_error_and_the_breaker_opens_then_recovers() -> None:
    clock = Clock()
    async with FrontierStub() as stub:
        client = FrontierClient(settings(stub, timeout_s=0.2, breaker_failures=2, breaker_reset_s=30), clock=clock)
        await client.start()
        try:
            stub.hang = True
            with pytest.raises(FrontierError, match="Timeout"):
                await client.chat([{"role": "user", "content": "a"}])
            stub.hang = False
            stub.fail(1, status=503)
            with pytest.raises(FrontierError, match="HTTP 503"):
                await client.chat([{"role": "user", "content": "b"}])
            calls = len(stub.requests)
            with pytest.raises(FrontierUnavailable):
                await client.chat([{"role": "user", "content": "c"}])
            assert len(stub.requests) == calls  # not even attempted
            clock.now = 31
            assert (await client.chat([{"role": "user", "content": "d"}])).text == "Stub answer: d"
            assert client.breaker.state == "closed"
        finally:
            await client.stop()


def test_half_open_allows_exactly_one_trial() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, reset_s=10, clock=clock)
    breaker.failure()
    assert not breaker.allow()
    clock.now = 10
    assert breaker.allow() and not breaker.allow()
    breaker.failure()
    assert breaker.state == "open"
