"""``kitt-hub simulate [--config PATH]``: the configured devices' bridges, simulated on the broker."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from hub.cli.common import EXIT_UNAVAILABLE, add_config_arg, load_or_exit
from hub.config import Config
from hub.logs import configure_logging


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="answer as Zigbee2MQTT/Tasmota bridges for the configured devices")
    p.add_argument("--legacy-availability", action="store_true",
                   help="plain online/offline availability (Zigbee2MQTT 1.x) instead of {\"state\": …}")
    add_config_arg(p)
    p.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    configure_logging(level=config.hub.log_level, fmt=config.hub.log_format)
    return asyncio.run(_serve(config, legacy=args.legacy_availability))


async def _serve(config: Config, *, legacy: bool) -> int:
    from devices.simulator import Simulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sim = Simulator(config, legacy_availability=legacy)
    try:
        await sim.start()
    except OSError as exc:
        print(f"MQTT broker {config.mqtt.redacted_url()} not reachable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        await stop.wait()
    finally:
        await sim.stop()
    return 0
