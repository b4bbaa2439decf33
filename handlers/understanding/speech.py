"""What the hub says: actions in words, tracked state in words, yes/no answers to state questions."""

from __future__ import annotations

from typing import Any

from hub.contracts import DeviceAction, DeviceState

_GERUND = {"turn_on": "turning on", "turn_off": "turning off", "toggle": "toggling", "lock": "locking",
           "unlock": "unlocking", "open": "opening", "close": "closing", "stop": "stopping",
           "arm": "arming", "disarm": "disarming"}
_VERB = {"turn_on": "turn on", "turn_off": "turn off"}


def _fmt(value: Any) -> str:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(f)) if f.is_integer() else f"{f:g}"


def doing(action: DeviceAction, label: str) -> str:
    """'turning on the kitchen light', 'setting the living room thermostat to 21 degrees'."""
    p = action.params
    if action.action == "set_temperature":
        return f"setting the {label} to {_fmt(p.get('temperature'))} degrees"
    if action.action == "set_brightness":
        return f"setting the {label} to {_fmt(p.get('brightness'))} percent"
    if action.action == "set_position":
        return f"setting the {label} to {_fmt(p.get('position'))} percent open"
    if action.action == "arm":
        return f"arming the {label} ({p.get('mode', 'away')})"
    return f"{_GERUND.get(action.action, action.action.replace('_', ' '))} the {label}"


def verb_phrase(action: DeviceAction, label: str) -> str:
    """'unlock the front door' (for prompts and refusals)."""
    return f"{_VERB.get(action.action, action.action.replace('_', ' '))} the {label}"


def word_for(kind: str, state: dict[str, Any]) -> str | None:
    """The one word that answers 'is it …?' for this kind: on/off, locked/unlocked, open/closed, armed/disarmed."""
    if kind == "lock" and state.get("lock"):
        return str(state["lock"]).lower()
    if kind == "cover" and state.get("cover"):
        return str(state["cover"]).lower()
    if kind == "valve" and state.get("valve"):
        return str(state["valve"]).lower()
    if kind == "alarm" and state.get("alarm"):
        return "disarmed" if state["alarm"] == "disarmed" else "armed"
    if state.get("state"):
        return str(state["state"]).lower()
    return None


def describe(kind: str, label: str, s: DeviceState | None) -> str:
    if s is None or not s.state:
        tail = " It is unavailable." if s is not None and s.available is False else ""
        return f"I don't know the state of the {label} yet.{tail}"
    st = s.state
    if kind == "climate":
        parts = []
        if st.get("temperature") is not None:
            parts.append(f"set to {_fmt(st['temperature'])} degrees")
        if st.get("current_temperature") is not None:
            parts.append(f"it is {_fmt(st['current_temperature'])} degrees now")
        if st.get("state") == "OFF":
            parts.insert(0, "off")
        text = f"The {label} is " + ("; ".join(parts) if parts else "on") + "."
    elif kind == "alarm" and st.get("alarm"):
        text = f"The {label} is {str(st['alarm']).replace('_', ' ')}."
    else:
        word = word_for(kind, st) or "in an unknown state"
        text = f"The {label} is {word}"
        if kind == "light" and st.get("state") == "ON" and st.get("brightness") is not None:
            text += f" at {_fmt(st['brightness'])} percent"
        text += "."
    if s.available is False:
        text += " It is unavailable right now, so that may be out of date."
    return text


def answer_yes_no(kind: str, label: str, s: DeviceState | None, asked: str) -> str:
    current = word_for(kind, s.state) if s is not None and s.state else None
    if current is None:
        return describe(kind, label, s)
    asked = asked.lower()
    same = current == asked or (asked == "armed" and current.startswith("armed"))
    text = f"{'Yes' if same else 'No'}, the {label} is {current}."
    if s is not None and s.available is False:
        text += " It is unavailable right now, so that may be out of date."
    return text


def temperature(label: str, area: str, s: DeviceState | None) -> str:
    if s is None or s.state.get("current_temperature") is None:
        return describe("climate", label, s)
    text = f"It is {_fmt(s.state['current_temperature'])} degrees in the {area or label}"
    if s.state.get("temperature") is not None:
        text += f"; the {label} is set to {_fmt(s.state['temperature'])}"
    return text + "."
