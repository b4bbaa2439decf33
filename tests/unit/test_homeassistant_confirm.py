"""Approve / cancel from HA: exactly one pending confirmation per site, PIN policy, events."""

from __future__ import annotations

from dataclasses import replace

from handlers.homeassistant.confirm_actions import (
    HA_PRINCIPAL,
    ConfirmActions,
    EventDeduper,
    Refusal,
    event_for,
)
from handlers.homeassistant.discovery import site_slots
from tests.support.ha_fakes import FakeConfirmations, make_confirmation

KITCHEN, BEDROOM, NO_SITE = site_slots(["kitchen", "bedroom"])


async def test_approve_the_one_pending_confirmation_of_the_site() -> None:
    svc = FakeConfirmations()
    mine = svc.add(make_confirmation(site="kitchen"))
    svc.add(make_confirmation(site="bedroom"))
    result = await ConfirmActions(allow_pin=False).approve(svc, KITCHEN)
    assert not isinstance(result, Refusal) and result.id == mine.id
    assert svc.calls == [("approve", mine.id, HA_PRINCIPAL, None)]
    assert HA_PRINCIPAL.kind == "user" and HA_PRINCIPAL.user == "homeassistant"


async def test_nothing_pending_and_ambiguous_approve_nothing() -> None:
    svc = FakeConfirmations()
    actions = ConfirmActions(allow_pin=False)
    assert (await actions.approve(svc, KITCHEN)).reason == "nothing_pending"  # type: ignore[union-attr]
    svc.add(make_confirmation(site="kitchen"))
    svc.add(make_confirmation(site="kitchen"))
    assert (await actions.approve(svc, KITCHEN)).reason == "ambiguous"  # type: ignore[union-attr]
    assert svc.calls == []


async def test_unbound_slot_only_sees_confirmations_without_a_site() -> None:
    svc = FakeConfirmations()
    svc.add(make_confirmation(site="kitchen"))
    unbound = svc.add(make_confirmation(site=None))
    result = await ConfirmActions(allow_pin=False).approve(svc, NO_SITE)
    assert not isinstance(result, Refusal) and result.id == unbound.id


async def test_pin_level_is_refused_from_ha_unless_allowed() -> None:
    svc = FakeConfirmations()
    svc.add(make_confirmation("alarm", "disarm", level="pin", site="kitchen", hazard_class="alarm.disarm"))
    refused = await ConfirmActions(allow_pin=False).approve(svc, KITCHEN)
    assert isinstance(refused, Refusal) and refused.reason == "pin_not_allowed"
    hint = await ConfirmActions(allow_pin=True).approve(svc, KITCHEN)
    assert isinstance(hint, Refusal) and hint.reason == "pin_required"
    assert svc.calls == []  # not even an attempt (no PIN failure is counted)


async def test_pin_from_the_text_entity_approves() -> None:
    svc = FakeConfirmations()
    c = svc.add(make_confirmation("alarm", "disarm", level="pin", site="kitchen"))
    actions = ConfirmActions(allow_pin=True)
    wrong = await actions.approve(svc, KITCHEN, pin="0000")
    assert isinstance(wrong, Refusal) and wrong.reason == "pin_wrong"
    ok = await actions.approve(svc, KITCHEN, pin="1234")
    assert not isinstance(ok, Refusal) and ok.id == c.id and ok.state == "executing"


async def test_cancel_cancels_every_pending_one_of_the_site() -> None:
    svc = FakeConfirmations()
    a = svc.add(make_confirmation(site="kitchen"))
    b = svc.add(make_confirmation(site="kitchen"))
    other = svc.add(make_confirmation(site="bedroom"))
    done = await ConfirmActions(allow_pin=False).cancel(svc, KITCHEN)
    assert isinstance(done, list) and {c.id for c in done} == {a.id, b.id}
    assert svc.items[other.id].state == "pending"


async def test_no_service_is_a_refusal_not_a_crash() -> None:
    actions = ConfirmActions(allow_pin=False)
    assert (await actions.approve(None, KITCHEN)).reason == "unavailable"  # type: ignore[union-attr]
    assert (await actions.cancel(None, KITCHEN)).reason == "unavailable"  # type: ignore[union-attr]


def test_events_and_dedupe() -> None:
    c = make_confirmation(site="kitchen")
    assert event_for(c)["event_type"] == "requested"  # type: ignore[index]
    for state, kind in (("confirmed", "approved"), ("executing", "approved"), ("done", "done"),
                        ("failed", "failed"), ("cancelled", "cancelled"), ("expired", "expired")):
        assert event_for(replace(c, state=state))["event_type"] == kind  # type: ignore[arg-type,index]
    seen = EventDeduper(size=2)
    assert seen.first(c.id, "approved") and not seen.first(c.id, "approved")
    assert seen.first(c.id, "done")
