"""Hermes voice: the dialogue manager, NLU and intent handler for Rhasspy/Snips satellites.

See ``docs/voice.md`` and ``../shared/reference/hermes-voice.md`` §6. The plugin entry point is ``create``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from handlers.voice.plugin import VoicePlugin
    from hub.plugins import PluginContext


def create(ctx: PluginContext) -> VoicePlugin:
    from handlers.voice.plugin import VoicePlugin

    return VoicePlugin(ctx)
