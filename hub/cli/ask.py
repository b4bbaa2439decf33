"""``kitt-hub ask TEXT [--site S]``: a request over MQTT 5 with a Response Topic, the reply printed."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid

from gmqtt import Client, Message
from gmqtt.mqtt.constants import MQTTv50

from hub.cli.common import EXIT_UNAVAILABLE, add_config_arg, load_or_exit
from hub.config import Config
from hub.spine.topics import HubTopics


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="send a text request over MQTT and print the reply")
    p.add_argument("text", nargs="+")
    p.add_argument("--site", default="cli")
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--json", action="store_true", help="print the whole reply as JSON")
    add_config_arg(p)
    p.set_defaults(func=_ask)


def _ask(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    return asyncio.run(ask(config, " ".join(args.text), site=args.site, timeout=args.timeout, as_json=args.json))


async def ask(config: Config, text: str, *, site: str, timeout: float, as_json: bool) -> int:
    topics = HubTopics(config.hub.id)
    request_id = uuid.uuid4().hex
    response_topic = f"{topics.base}/cli-reply/{request_id}"
    answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def on_message(client: Client, topic: str, payload: bytes, qos: int, properties: dict) -> int:
        corr = properties.get("correlation_data") or [b""]
        if topic == response_topic and corr[0] == request_id.encode() and not answer.done():
            answer.set_result(payload)
        return 0

    client = Client(f"kitt-cli-{request_id[:8]}")
    client.on_message = on_message
    s = config.mqtt
    if s.username:
        client.set_auth_credentials(s.username, s.password)
    try:
        await client.connect(s.host, s.port, ssl=s.tls, version=MQTTv50)
    except OSError as exc:
        print(f"MQTT broker {s.redacted_url()} not reachable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        client.subscribe(response_topic, qos=1)
        await asyncio.sleep(0.05)
        body = json.dumps({"id": request_id, "text": text, "site": site})
        client.publish(Message(topics.ask, body, qos=2, response_topic=response_topic,
                               correlation_data=request_id.encode(), user_property=[("id", request_id)]))
        try:
            payload = await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            print(f"no reply within {timeout:.0f}s (is the hub running?)", file=sys.stderr)
            return EXIT_UNAVAILABLE
    finally:
        await client.disconnect()
    reply = json.loads(payload)
    print(json.dumps(reply, indent=2) if as_json else reply.get("text", payload.decode()))
    return 0
