"""Kernel services beside the spine, wired by configuration: embedder, vectors, memory, semantic cache,
confirmations, jobs. Kept apart from ``hub.app`` so the kernel's start/stop order stays readable.

The slow ones (model load, vector index open) never delay readiness: they are reported by ``/readyz`` as
non-required checks and used by plugins once ready.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from hub.app import Hub

log = structlog.get_logger("kitt.services")


async def start_all(hub: Hub) -> None:
    """Services that do not need the store: the embedder (loads in the background), vectors, cache."""
    from hub.cache import SemanticCache, make_backend
    from hub.embeddings import Embedder
    from hub.vectors import MemoryStore, open_vector_store

    cfg = hub.config
    embedder = Embedder(model_path=cfg.resolve(cfg.embeddings.model),
                        tokenizer_path=cfg.resolve(cfg.embeddings.tokenizer),
                        threads=cfg.embeddings.threads, metrics=hub.metrics, lru_size=cfg.embeddings.lru_size)
    await embedder.start()
    hub.push_stop(embedder.stop)
    hub.services.embedder = embedder
    hub.readiness.add("embedder", lambda: True if embedder.ready else (embedder.readiness_reason or "loading"),
                      required=False)

    vectors = open_vector_store(url=cfg.vectors.url, api_key=cfg.vectors.api_key or None, state_dir=cfg.state_dir,
                                idle=lambda: hub.spine is not None and hub.spine.idle_for(1.0))
    vectors_state: dict[str, Any] = {"ready": False, "error": None}
    hub.readiness.add("vectors", lambda: True if vectors_state["ready"] else (vectors_state["error"] or "opening"),
                      required=False)

    async def open_vectors() -> None:
        try:
            await vectors.start()
            memory = MemoryStore(store=vectors, dim=embedder.dim)
            await memory.start()
            hub.services.extra["vector_memory"] = memory
            cache = SemanticCache(backend=make_backend(redis_url=cfg.redis.url, max_entries=cfg.cache.max_entries,
                                                       ttl_s=cfg.cache.ttl_s, prefix=f"kitt:{cfg.hub.id}:cache:"),
                                  vectors=vectors, metrics=hub.metrics, threshold=cfg.cache.threshold,
                                  ttl_s=cfg.cache.ttl_s, dim=embedder.dim)
            await cache.start()
            hub.services.cache = cache
            vectors_state["ready"] = True
        except Exception as exc:  # the hub runs without memory and cache; readiness says why
            vectors_state["error"] = f"{type(exc).__name__}: {exc}"
            log.exception("vector store or cache failed to start")

    async def stop_vectors() -> None:
        if hub.services.cache is not None:
            await hub.services.cache.stop()
        await vectors.stop()

    hub.services.vectors = vectors
    hub.push_stop(stop_vectors)
    await open_vectors()


async def before_plugins(hub: Hub) -> None:
    """Kernel services that plugins use from their start(): memory (write-through), confirmations."""
    from hub.confirmations import ConfirmationService
    from hub.memory import Memory

    if (vector_memory := hub.services.extra.get("vector_memory")) is not None and hub.store is not None:
        hub.services.memory = Memory(store=hub.store, vectors=vector_memory)

    assert hub.store is not None and hub.spine is not None
    spine = hub.spine
    # An approval's device command and audit events are written in one statement with its commit.
    command_transaction = functools.partial(spine.transaction, defer_appends=True)
    service = ConfirmationService(store=hub.store, metrics=hub.metrics, hazards=hub.config.hazards,
                                  devices=lambda: hub.services.devices, transaction=command_transaction,
                                  dsn=hub.store.dsn, appending=spine.appending)
    await service.start()
    hub.services.confirmations = service
    hub.push_stop(service.stop)


async def after_spine(hub: Hub) -> None:
    """Services that need the store, the spine and the plugins' services: cache invalidation, jobs."""
    if hub.services.confirmations is not None:
        hub.services.confirmations.start_reconciliation()
    devices = hub.services.devices
    if devices is not None:
        def on_change(name: str, state: Any) -> None:
            cache = hub.services.cache
            if cache is not None:
                hub.spawn(cache.invalidate_tag(name), f"kitt[cache].invalidate:{name}")

        hub.push_stop(_as_async(devices.subscribe_changes(on_change)))
    await _start_jobs(hub)


def _as_async(undo: Any) -> Any:
    async def run() -> None:
        if callable(undo):
            undo()

    return run


async def _start_jobs(hub: Hub) -> None:
    if not hub.config.jobs:
        return
    try:
        from hub.jobs import JobService
    except ImportError:
        log.warning("jobs are not available in this build")
        return
    assert hub.store is not None and hub.spine is not None
    spine = hub.spine

    async def publish(topic: str, payload: dict[str, Any]) -> None:
        await spine.publish(topic, payload, qos=1)

    async def health_probe() -> dict[str, Any]:
        _, checks = await hub.readiness.evaluate()
        out: dict[str, Any] = {c.name: ("ok" if c.ok else c.reason) for c in checks}
        devices = hub.services.devices
        if devices is not None:
            for info in devices.all():
                state = devices.state(info.name)
                out[f"device:{info.name}"] = "ok" if state is not None and state.available else "unavailable"
        return out

    async def frontier(prompt: str) -> str | None:
        client = hub.services.frontier
        if client is None or not client.enabled:
            return None
        from hub.frontier import FrontierError

        try:
            reply = await client.chat([{"role": "user", "content": prompt}])
        except FrontierError as exc:
            log.warning("frontier unavailable for a routine", error=str(exc))
            return None
        return reply.text

    jobs = JobService(store=hub.store, metrics=hub.metrics, jobs=hub.config.jobs,
                      instance_id=hub.config.client_id, publish=publish, health_probe=health_probe,
                      frontier=frontier, hazard_gate=lambda task: _hazard_gate(hub, task), hub_id=hub.config.hub.id)
    await jobs.start()
    hub.services.jobs = jobs
    hub.push_stop(jobs.stop)

    async def jobs_health() -> bool | str:
        health = await jobs.health()
        if health["ok"]:
            return True
        late = [str(j["job"]) for j in health["overdue"]]
        dead = [n for n, state in health["loops"].items() if state != "running"]
        return "; ".join(filter(None, [f"no success within twice the period: {', '.join(late)}" if late else "",
                                       f"job loops stopped: {', '.join(dead)}" if dead else ""]))

    # Reported by /readyz and `kitt-hub status`, not a readiness gate: a late routine must not take the hub down.
    hub.readiness.add("jobs", jobs_health, required=False)


async def _hazard_gate(hub: Hub, task: Any) -> str:
    """A hazardous task never runs on its own: it opens (once per task) a confirmation a person must approve."""
    from hub.contracts import DeviceAction, Principal

    service = hub.services.confirmations
    if service is None:
        raise RuntimeError("no confirmation service: hazardous tasks wait")
    correlation = f"task:{task.id}"
    assert hub.store is not None
    existing = await hub.store.fetchval(
        "SELECT id FROM confirmations WHERE correlation_id = $1 AND state IN ('pending', 'confirmed', 'executing')",
        correlation)
    if existing:
        return existing
    params = dict(task.params or {})
    action = DeviceAction(str(params.get("device", "task")), str(params.get("action", task.action)),
                          dict(params.get("params") or {}))
    devices = hub.services.devices
    hazard = (devices.hazard_class(action) if devices is not None else None) or "task.hazardous"
    confirmation = await service.request(action, hazard_class=hazard,
                                         principal=Principal(kind="job", user="task_execution_cycle"),
                                         correlation_id=correlation)
    return confirmation.id
