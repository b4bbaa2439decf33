"""The polarity guard: two requests that differ in direction, negation or numbers never share an answer.

Embeddings place "turn on the light" and "turn off the light" at cosine ~0.9+, above any useful
threshold (GPTCache #694), so a semantic hit also needs equal *signatures*: the opposite-pair words
each text uses (per pair: which side), the parity of negations, and the numbers and time words
("today", "monday") it mentions.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


# group → (words of one side, words of the other side)
OPPOSITES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    name: (_set(a), _set(b))
    for name, a, b in [
        ("on_off", "on", "off"),
        ("open_close", "open opens opened opening reopen",
         "close closes closed closing shut shuts shutting"),
        ("lock_unlock", "lock locks locked locking", "unlock unlocks unlocked unlocking"),
        ("arm_disarm", "arm arms armed arming", "disarm disarms disarmed disarming"),
        ("up_down", "up upstairs", "down downstairs"),
        ("start_stop", "start starts started starting resume resumes play", "stop stops stopped stopping "
         "pause pauses paused halt"),
        ("enable_disable", "enable enables enabled enabling activate activated connect connected",
         "disable disables disabled disabling deactivate deactivated disconnect disconnected"),
        ("increase_decrease", "increase increases increased increasing more plus",
         "decrease decreases decreased decreasing less minus fewer reduce reduced"),
        ("raise_lower", "raise raises raised raising higher", "lower lowers lowered lowering"),
        ("warm_cool", "warmer hotter warm warmest heat", "cooler colder cool coldest cold"),
        ("bright_dim", "brighter brighten bright", "dimmer dim darker darken"),
        ("add_remove", "add adds added", "remove removes removed delete deleted"),
        ("in_out", "inside indoors", "outside outdoors"),
        ("max_min", "max maximum highest full", "min minimum lowest"),
        ("before_after", "before earlier", "after later"),
        ("yes_no", "yes yeah yep", "nope"),
        ("arrive_leave", "arrive arriving arrived home", "leave leaving left away"),
    ]
}
_SIDE = {w: (g, s) for g, sides in OPPOSITES.items() for s, words in enumerate(sides) for w in words}

NEGATIONS = _set(
    "not no never none nothing nobody nowhere neither nor cannot without dont doesnt didnt isnt arent "
    "wasnt werent wont wouldnt cant couldnt shouldnt havent hasnt hadnt mustnt"
)
NUMBERS = _set(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred "
    "thousand half quarter"
)
# "the weather today" and "the weather tomorrow" embed at ~0.86: when a request is about is part of it
TIMES = _set(
    "today tonight tomorrow yesterday morning afternoon evening night weekend week month year now "
    "monday tuesday wednesday thursday friday saturday sunday"
)
_WORDS = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)?")


class Signature(NamedTuple):
    sides: tuple[tuple[str, int, int], ...]  # (group, side, count), sorted
    negated: bool
    numbers: tuple[str, ...]
    times: tuple[str, ...]


def words(text: str) -> list[str]:
    return _WORDS.findall(text.lower().replace("’", "'"))


def signature(text: str) -> Signature:
    sides: Counter[tuple[str, int]] = Counter()
    negations = 0
    numbers: list[str] = []
    times: list[str] = []
    for word in words(text):
        if word.endswith("n't") or word.replace("'", "") in NEGATIONS:
            negations += 1
            continue
        bare = word.replace("'", "")
        if bare in _SIDE:
            sides[_SIDE[bare]] += 1
        elif bare[0].isdigit() or bare in NUMBERS:
            numbers.append(bare)
        elif bare in TIMES:
            times.append(bare)
    return Signature(
        tuple(sorted((g, s, n) for (g, s), n in sides.items())), negations % 2 == 1, tuple(sorted(numbers)),
        tuple(sorted(set(times))),
    )


def compatible(a: str, b: str) -> bool:
    """True when ``b``'s answer may serve ``a``: same direction words, negation parity, numbers
    and time words."""
    return signature(a) == signature(b)
