"""What the dialogue manager says on its own behalf (everything else comes from the understanding service)."""

from __future__ import annotations

import re

from hub.contracts import DeviceAction

INTERRUPTED = "Sorry, I was interrupted. "
NOT_UNDERSTOOD = "Sorry, I didn't understand that."
CANCELLED = "OK, I won't."
ASK_AGAIN = "Sorry, please answer yes or no. "
ASK_PIN = " Please say your PIN."
NOT_CONFIRMED_YET = "I've sent the command, but the device has not reported back yet."
LOCKED_OUT = "Too many wrong PINs. Please try again later."
WRONG_PIN = "That PIN is not right. I won't do it."
PIN_ELSEWHERE = "This needs your PIN, and none is set up for voice. Please use the panel."
TOO_LATE = "Sorry, that took too long. I won't do it."
UNAVAILABLE = "Sorry, I can't do that right now."

# The state an action leaves its device in, as spoken ("The front door is unlocked.").
_RESULT_WORDS = {"unlock": "unlocked", "lock": "locked", "open": "open", "close": "closed", "disarm": "disarmed",
                 "arm": "armed", "turn_on": "on", "turn_off": "off", "stop": "stopped"}

_DIGITS = {"zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "for": "4", "five": "5",
           "six": "6", "seven": "7", "eight": "8", "ate": "8", "nine": "9"}


def done_text(action: DeviceAction, label: str) -> str:
    word = _RESULT_WORDS.get(action.action)
    return f"The {label} is {word}." if word else f"Done: {action.describe()}."


def failed_text(action: DeviceAction, label: str) -> str:
    word = _RESULT_WORDS.get(action.action, "changed")
    return f"I couldn't confirm the {label} was {word}."


def spoken_pin(text: str) -> str | None:
    """Digits from an answer: "1 2 3 4", "1234" or "one two three four". None when there are none."""
    digits = []
    for token in re.findall(r"[a-z]+|\d", text.lower()):
        if token.isdigit():
            digits.append(token)
        elif token in _DIGITS:
            digits.append(_DIGITS[token])
    return "".join(digits) or None
