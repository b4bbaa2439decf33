"""PostgreSQL: the one durable source of truth."""

from hub.store.embedded import EmbeddedPostgres
from hub.store.migrate import migrate
from hub.store.store import Store

__all__ = ["EmbeddedPostgres", "Store", "migrate"]
