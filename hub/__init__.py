"""KITT Edge Hub: the runtime kernel (config, lifecycle, MQTT spine, store, metrics, web)."""

__version__ = "0.1.0"
