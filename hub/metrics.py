"""Every Prometheus metric of the hub, in one registry that is passed in (no module globals).

Names follow ``shared/INTERFACES.md``; add to them freely, never rename.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Owns a private ``CollectorRegistry`` so tests and several hubs in one process never collide."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.messages_received = Counter(
            "kitt_messages_received", "Inbound MQTT messages", ["topic_class"], registry=r
        )
        self.messages_rejected = Counter(
            "kitt_messages_rejected", "Inbound messages rejected as invalid", ["reason"], registry=r
        )
        self.messages_duplicate = Counter(
            "kitt_messages_duplicate", "Inbound messages dropped as redeliveries", ["topic_class"], registry=r
        )
        self.handler_errors = Counter(
            "kitt_handler_errors", "Handler exceptions caught by the router", ["handler"], registry=r
        )
        self.request_latency = Histogram(
            "kitt_request_latency_seconds", "Request handling latency", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.embeddings_computed = Counter(
            "kitt_embeddings_computed", "Sentence embeddings computed by the model", registry=r
        )
        self.embedding_seconds = Histogram(
            "kitt_embedding_seconds", "Time to compute one embedding batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.cache_hits = Counter("kitt_cache_hits", "Semantic cache hits", ["kind"], registry=r)
        self.cache_misses = Counter("kitt_cache_misses", "Semantic cache misses", registry=r)
        self.cache_entries = Gauge("kitt_cache_entries", "Entries in the semantic cache", registry=r)
        self.cache_evictions = Counter("kitt_cache_evictions", "Entries evicted (LRU)", registry=r)
        self.cache_errors = Counter(
            "kitt_cache_backend_errors", "Cache backend failures (degraded to miss)", registry=r
        )
        self.confirmations = Gauge("kitt_confirmations", "Hazard confirmations by state", ["state"], registry=r)
        self.job_runs = Counter("kitt_job_runs", "Job runs finished", ["job", "status"], registry=r)
        self.job_last_success = Gauge(
            "kitt_job_last_success_timestamp_seconds", "Unix time of a job's last success", ["job"], registry=r
        )
        self.outbox_pending = Gauge("kitt_outbox_pending", "Outbox rows not yet acknowledged", registry=r)
        self.db_write_errors = Counter("kitt_db_write_errors", "Database writes that failed", registry=r)
        self.db_slow_queries = Counter("kitt_db_slow_queries", "Queries above the slow threshold", registry=r)
        self.mqtt_connected = Gauge("kitt_mqtt_connected", "1 while the MQTT spine is connected", registry=r)
        self.mqtt_reconnects = Counter("kitt_mqtt_reconnects", "MQTT reconnects", registry=r)
        self.mqtt_published = Counter("kitt_mqtt_published", "Messages published", ["topic_class"], registry=r)
        self.startup_seconds = Gauge("kitt_startup_seconds", "Seconds from process start to ready", registry=r)

        self.mcp_tool_calls = Counter(
            "kitt_mcp_tool_calls", "MCP tool calls", ["server", "tool", "status"], registry=r
        )
        self.mcp_tool_seconds = Histogram(
            "kitt_mcp_tool_seconds", "MCP tool call duration", ["server"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.mcp_server_restarts = Counter(
            "kitt_mcp_server_restarts", "MCP server (re)starts after a failure", ["server"], registry=r
        )
        self.mcp_server_up = Gauge("kitt_mcp_server_up", "1 while an MCP server is connected", ["server"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
