#!/usr/bin/env bash
# The README's run command: a venv, the package, a broker (the machine's, or a private Mosquitto), the hub.
# Ctrl-C stops the hub (it drains and exits 0), then the private broker; nothing of ours is left running.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${KITT_CONFIG:-config.toml}
VENV=${KITT_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV"
  python3 -m venv "$VENV"
fi
stamp="$VENV/.kitt-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing kitt-hub into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e . && touch "$stamp"
fi

# Where the config points MQTT (host and port), via the hub's own config loader.
read -r MQTT_HOST MQTT_PORT < <("$VENV/bin/python" - "$CONFIG" <<'PY'
import sys
from hub.config import load_config
from hub.errors import ConfigError
try:
    c = load_config(sys.argv[1])
except ConfigError as e:
    print("\n".join(e.problems), file=sys.stderr); sys.exit(2)
print(c.mqtt.host, c.mqtt.port)
PY
)

broker_answers() { (exec 3<>"/dev/tcp/$MQTT_HOST/$MQTT_PORT") 2>/dev/null; }

MOSQ_PID=""
cleanup() {
  if [ -n "$MOSQ_PID" ] && kill -0 "$MOSQ_PID" 2>/dev/null; then
    kill "$MOSQ_PID" && wait "$MOSQ_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT

if ! broker_answers; then
  if [ "$MQTT_HOST" != "127.0.0.1" ] && [ "$MQTT_HOST" != "localhost" ]; then
    echo "no MQTT broker answers at $MQTT_HOST:$MQTT_PORT; start it or fix mqtt.url in $CONFIG" >&2
    exit 1
  fi
  if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "installing mosquitto from the OS packages"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
    else
      echo "Mosquitto is not installed. Run:  sudo apt-get install -y mosquitto   then run this again." >&2
      exit 1
    fi
  fi
  MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  state="$PWD/var/mosquitto"
  mkdir -p "$state"
  sed -e "s#@STATE_DIR@#$state#g" -e "s#@USER@#$(id -un)#g" systemd/mosquitto-dev.conf > "$state/mosquitto.conf"
  echo "starting a private Mosquitto on $MQTT_HOST:$MQTT_PORT (data in $state)"
  # Its own session, so Ctrl-C reaches the hub only; the broker stays up while the hub drains.
  setsid "$MOSQ" -c "$state/mosquitto.conf" -p "$MQTT_PORT" >"$state/mosquitto.log" 2>&1 &
  MOSQ_PID=$!
  for _ in $(seq 50); do broker_answers && break; sleep 0.1; done
fi

set +e
"$VENV/bin/kitt-hub" run --config "$CONFIG" &
HUB_PID=$!
trap 'kill -INT $HUB_PID 2>/dev/null' INT TERM
wait $HUB_PID; code=$?
# A signal interrupts the first wait; wait again for the hub's own exit code.
while kill -0 $HUB_PID 2>/dev/null; do wait $HUB_PID; code=$?; done
exit $code
