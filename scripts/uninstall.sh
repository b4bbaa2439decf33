#!/usr/bin/env bash
# Remove the KITT Edge Hub service installed by scripts/install.sh.
#
#   sudo scripts/uninstall.sh [--dry-run] [--purge]
#
# Stops and disables kitt-hub.service, removes the unit, the Mosquitto drop-in and /opt/kitt-hub.
# Keeps the configuration (/etc/kitt-hub), the data (/var/lib/kitt-hub: the embedded PostgreSQL with
# confirmations, audit log and schedules; the vectors) and the kitt-hub user, unless --purge.
# --dry-run prints every action and changes nothing. Idempotent: missing pieces are skipped.
# The paths can be moved for tests with the KITT_INSTALL_* variables of install.sh.
set -euo pipefail

PREFIX="${KITT_INSTALL_PREFIX:-/opt/kitt-hub}"
ETC="${KITT_INSTALL_ETC:-/etc/kitt-hub}"
STATE="${KITT_INSTALL_STATE:-/var/lib/kitt-hub}"
UNIT_DIR="${KITT_INSTALL_UNIT_DIR:-/etc/systemd/system}"
MOSQUITTO_DIR="${KITT_INSTALL_MOSQUITTO_DIR:-/etc/mosquitto}"
SERVICE_USER=kitt-hub

DRY_RUN=0
PURGE=0

usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --purge) PURGE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "uninstall.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=scripts/common.sh
source "$(dirname "$0")/common.sh"
require_root_unless_dry_run uninstall.sh

say "service"
if command -v systemctl >/dev/null; then
    # Both succeed when the unit is already stopped or disabled; a unit that is gone is not an error.
    run systemctl disable --now kitt-hub.service || true
fi
if [[ -e "$UNIT_DIR/kitt-hub.service" ]]; then
    run rm -f "$UNIT_DIR/kitt-hub.service"
fi
if [[ -d "$UNIT_DIR/kitt-hub.service.d" ]]; then
    run rm -rf "$UNIT_DIR/kitt-hub.service.d"
fi
if command -v systemctl >/dev/null; then
    run systemctl daemon-reload
    run systemctl reset-failed kitt-hub.service || true
fi

dropin="$MOSQUITTO_DIR/conf.d/kitt.conf"
if [[ -e "$dropin" ]]; then
    say "Mosquitto drop-in"
    run rm -f "$dropin"
    if command -v systemctl >/dev/null; then
        run systemctl try-restart mosquitto.service
    fi
fi

say "code: $PREFIX"
if [[ -e "$PREFIX" ]]; then
    run rm -rf "$PREFIX"
else
    echo "absent"
fi

if ((PURGE)); then
    say "purge: configuration, data and user"
    for path in "$ETC" "$STATE"; do
        if [[ -e "$path" ]]; then
            run rm -rf "$path"
        fi
    done
    if getent passwd "$SERVICE_USER" >/dev/null; then
        run userdel "$SERVICE_USER"
    fi
    if getent group "$SERVICE_USER" >/dev/null; then
        run groupdel "$SERVICE_USER"
    fi
else
    say "kept: $ETC (configuration, web token) and $STATE (database, vectors); --purge removes them"
fi
