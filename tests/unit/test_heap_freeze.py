"""After start-up the hub moves its long-lived objects out of the collector's reach (``freeze_startup_heap``)."""

from __future__ import annotations

import gc
import weakref

from hub.cli.run import freeze_startup_heap


def test_startup_objects_are_frozen_and_startup_garbage_is_collected_first() -> None:
    class Node:
        peer: object = None

    a, b = Node(), Node()
    a.peer, b.peer = b, a  # a cycle: only a collection frees it
    dead = weakref.ref(a)
    del a, b
    kept = [Node() for _ in range(100)]
    before = gc.get_freeze_count()
    try:
        freeze_startup_heap()
        assert dead() is None  # collected, not frozen
        assert gc.get_freeze_count() >= before + len(kept)
    finally:
        gc.unfreeze()
