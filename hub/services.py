"""Kernel services beside the spine (embedder, vectors, cache, jobs), wired to the hub by configuration.

Kept apart from ``hub.app`` so the kernel's start/stop order stays readable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from hub.app import Hub

log = structlog.get_logger("kitt.services")


async def start_all(hub: Hub) -> None:
    """Start services that do not need the store; slow loads go to the background."""


async def before_plugins(hub: Hub) -> None:
    """Kernel services that plugins use from their start(): confirmations."""
    from hub.confirmations import ConfirmationService

    assert hub.store is not None and hub.spine is not None
    spine = hub.spine
    service = ConfirmationService(store=hub.store, metrics=hub.metrics, hazards=hub.config.hazards,
                                  devices=lambda: hub.services.devices, notify_outbox=spine.notify_outbox,
                                  dsn=hub.store.dsn)
    await service.start()
    hub.services.confirmations = service
    hub.push_stop(service.stop)


async def after_spine(hub: Hub) -> None:
    """Start services that need the store and the spine (jobs)."""


async def before_spine_stop(hub: Hub) -> None:
    """Stop what ``after_spine`` started."""
