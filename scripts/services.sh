#!/usr/bin/env bash
# Makes sure the services the integration tests use are up: PostgreSQL 5432, Redis 6379, Mosquitto 1883,
# and the tools the fault and browser tests use. Starts (or installs, as root) only what is missing.
set -uo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 100); do answers "$1" && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }
as_root() { [ "$(id -u)" = 0 ]; }
apt_install() {
  as_root || { echo "missing $*; install with: sudo apt-get install -y $*" >&2; return 1; }
  if [ -z "${_APT_UPDATED:-}" ]; then apt-get update -qq; _APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! answers 5432; then
  if ! ls /etc/postgresql >/dev/null 2>&1; then apt_install postgresql; fi
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  wait_port 5432
fi
if ! answers 6379; then
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/kitt-ci-redis.log
  wait_port 6379
fi
if ! answers 1883; then
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || apt_install mosquitto
  MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  if [ -f /etc/mosquitto/mosquitto.conf ]; then "$MOSQ" -d -c /etc/mosquitto/mosquitto.conf; else "$MOSQ" -d -p 1883; fi
  wait_port 1883
fi
# Fault tests launch their own brokers and clusters; browser tests drive Debian's Chromium.
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
[ -x /usr/bin/chromium ] || apt_install chromium || echo "chromium unavailable: browser tests will skip" >&2
command -v systemd-analyze >/dev/null || apt_install systemd || true
exit 0
