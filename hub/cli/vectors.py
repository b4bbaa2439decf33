"""``kitt-hub vectors rebuild``: re-create the vector memory from PostgreSQL, offline.

The embedded vector index belongs to one process, and building it holds the interpreter for seconds, so the
rebuild runs with the hub stopped (a Qdrant server, ``vectors.url``, can be rebuilt while the hub runs).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from hub.cli.common import EXIT_UNAVAILABLE, add_config_arg, hub_answers, load_or_exit, offline_store
from hub.config import Config
from hub.errors import KittError
from hub.logs import configure_logging


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vectors", help="the vector store")
    vsub = p.add_subparsers(dest="vectors_command", required=True)
    rb = vsub.add_parser("rebuild", help="re-create the memory collection from PostgreSQL (hub stopped)")
    add_config_arg(rb)
    rb.set_defaults(func=_rebuild)


def _rebuild(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    configure_logging(level="warning", fmt=config.hub.log_format)
    if not config.vectors.url and hub_answers(config):
        print("the hub is running and owns the embedded vector index: stop it first (systemctl stop kitt-hub)",
              file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        return asyncio.run(rebuild(config))
    except KittError as exc:
        print(f"rebuild failed: {exc}", file=sys.stderr)
        return 1


async def rebuild(config: Config) -> int:
    from hub.embeddings import Embedder
    from hub.memory import rebuild_memory
    from hub.vectors import open_vector_store

    started = time.monotonic()
    async with offline_store(config) as store:
        embedder = Embedder(model_path=config.resolve(config.embeddings.model),
                            tokenizer_path=config.resolve(config.embeddings.tokenizer),
                            threads=config.embeddings.threads)
        vectors = open_vector_store(url=config.vectors.url, api_key=config.vectors.api_key or None,
                                    state_dir=config.state_dir)
        try:
            await embedder.start()
            await embedder.wait_ready()
            await vectors.start()
            count = await rebuild_memory(store, vectors, embedder.embed, dim=embedder.dim)
            await vectors.drop_collection("cache")  # derived from the cache entries; refilled as answers come
        finally:
            await vectors.stop()
            await embedder.stop()
    print(f"rebuilt the memory collection: {count} turns in {time.monotonic() - started:.1f}s")
    return 0
