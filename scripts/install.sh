#!/usr/bin/env bash
# Install KITT Edge Hub as a systemd service on a Debian box (see docs/operations.md).
#
#   sudo scripts/install.sh [--dry-run] [--no-start] [--extras otel] [--source PATH_OR_WHEEL]
#
# Idempotent: run it again to upgrade the code in place. It never overwrites /etc/kitt-hub/config.toml
# or an existing web token, and restarts Mosquitto only when its drop-in changed.
#   system user   kitt-hub (no login, home /var/lib/kitt-hub)
#   code          /opt/kitt-hub/venv (pip install of this repository), models in /opt/kitt-hub/models
#   config        /etc/kitt-hub/config.toml (root:kitt-hub 0640), /etc/kitt-hub/web-token (root 0600)
#   unit          /etc/systemd/system/kitt-hub.service; enabled and started
#   broker        /etc/mosquitto/conf.d/kitt.conf when Mosquitto is installed
# --dry-run prints every action and changes nothing (it does not need root).
# The paths can be moved for tests with KITT_INSTALL_PREFIX, KITT_INSTALL_ETC, KITT_INSTALL_STATE,
# KITT_INSTALL_UNIT_DIR and KITT_INSTALL_MOSQUITTO_DIR.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${KITT_INSTALL_PREFIX:-/opt/kitt-hub}"
ETC="${KITT_INSTALL_ETC:-/etc/kitt-hub}"
STATE="${KITT_INSTALL_STATE:-/var/lib/kitt-hub}"
UNIT_DIR="${KITT_INSTALL_UNIT_DIR:-/etc/systemd/system}"
MOSQUITTO_DIR="${KITT_INSTALL_MOSQUITTO_DIR:-/etc/mosquitto}"
SERVICE_USER=kitt-hub
PYTHON="${PYTHON:-python3}"

DRY_RUN=0
START=1
EXTRAS=""
SOURCE="$REPO"

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --no-start) START=0 ;;
        --extras) EXTRAS="${2:?--extras needs a value, e.g. otel}"; shift ;;
        --source) SOURCE="${2:?--source needs a path}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=scripts/common.sh
source "$(dirname "$0")/common.sh"
require_root_unless_dry_run install.sh
for tool in systemctl "$PYTHON"; do
    if ! command -v "$tool" >/dev/null; then
        if ((DRY_RUN)); then
            warn "$tool not found"
        else
            echo "install.sh: $tool not found" >&2
            exit 1
        fi
    fi
done

say "system user $SERVICE_USER"
if getent passwd "$SERVICE_USER" >/dev/null; then
    echo "exists"
else
    run useradd --system --user-group --home-dir "$STATE" --no-create-home \
        --shell /usr/sbin/nologin --comment "KITT Edge Hub" "$SERVICE_USER"
fi

say "code: $PREFIX/venv from $SOURCE"
run install -d -m 0755 "$PREFIX"
if [[ -x "$PREFIX/venv/bin/python" ]]; then
    echo "venv exists"
else
    run "$PYTHON" -m venv "$PREFIX/venv"
fi
target="$SOURCE"
if [[ -n "$EXTRAS" ]]; then
    target="${SOURCE}[${EXTRAS}]"
fi
run "$PREFIX/venv/bin/pip" install --disable-pip-version-check --no-cache-dir --upgrade "$target"

if [[ -d "$REPO/models/onnx" ]]; then
    say "embedding model: $PREFIX/models/onnx"
    run install -d -m 0755 "$PREFIX/models/onnx"
    for f in "$REPO"/models/onnx/*; do
        if [[ -f "$f" ]]; then
            run install -m 0644 "$f" "$PREFIX/models/onnx/"
        fi
    done
fi
if [[ -f "$REPO/docs/operations.md" ]]; then
    run install -D -m 0644 "$REPO/docs/operations.md" "$PREFIX/docs/operations.md"
fi

say "config: $ETC"
run install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC"
if [[ -e "$ETC/config.toml" ]]; then
    echo "config.toml exists: kept"
elif [[ -f "$REPO/config.toml" ]]; then
    run install -m 0640 -o root -g "$SERVICE_USER" "$REPO/config.toml" "$ETC/config.toml"
else
    warn "no config.toml in $REPO: the hub starts on its defaults"
    run install -m 0640 -o root -g "$SERVICE_USER" /dev/null "$ETC/config.toml"
fi
# Relative model paths in the config (models/onnx/…) resolve against the config's folder.
if [[ -e "$ETC/models" || -L "$ETC/models" ]]; then
    echo "$ETC/models exists: kept"
else
    run ln -s "$PREFIX/models" "$ETC/models"
fi
if [[ -s "$ETC/web-token" ]]; then
    echo "web-token exists: kept"
else
    say "generate the web panel token: $ETC/web-token (0600, read by systemd's LoadCredential)"
    if ((DRY_RUN)); then
        echo "+ (umask 077; $PYTHON -c 'import secrets; print(secrets.token_urlsafe(32))' > $ETC/web-token)"
    else
        (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$ETC/web-token")
    fi
    run chown root:root "$ETC/web-token"
    run chmod 0600 "$ETC/web-token"
fi

say "unit: $UNIT_DIR/kitt-hub.service"
run install -D -m 0644 "$REPO/systemd/kitt-hub.service" "$UNIT_DIR/kitt-hub.service"

if command -v mosquitto >/dev/null || [[ -d "$MOSQUITTO_DIR" ]]; then
    dropin="$MOSQUITTO_DIR/conf.d/kitt.conf"
    say "Mosquitto drop-in: $dropin"
    if [[ -f "$dropin" ]] && cmp -s "$REPO/systemd/mosquitto-kitt.conf" "$dropin"; then
        echo "unchanged"
    else
        main_conf="$MOSQUITTO_DIR/mosquitto.conf"
        if [[ -f "$main_conf" ]] && ! grep -Eq "^[[:space:]]*include_dir[[:space:]]+$MOSQUITTO_DIR/conf.d/?[[:space:]]*$" "$main_conf"; then
            warn "$main_conf has no 'include_dir $MOSQUITTO_DIR/conf.d': add it, or the drop-in is ignored"
        fi
        if [[ -f "$main_conf" ]] && grep -Eq '^[[:space:]]*(listener|port)[[:space:]]' "$main_conf"; then
            warn "$main_conf defines a listener: remove it, the drop-in's 'listener 1883 127.0.0.1' collides"
        fi
        run install -D -m 0644 "$REPO/systemd/mosquitto-kitt.conf" "$dropin"
        run systemctl try-restart mosquitto.service
    fi
else
    say "Mosquitto is not installed: skipped its drop-in (apt-get install mosquitto, or set mqtt.url)"
fi

say "systemd"
run systemctl daemon-reload
if ((START)); then
    run systemctl enable kitt-hub.service
    # restart, not start: an upgrade must load the new code.
    run systemctl restart kitt-hub.service
    say "done: systemctl status kitt-hub · journalctl -u kitt-hub -f"
else
    run systemctl enable kitt-hub.service
    say "done (not started): systemctl start kitt-hub"
fi
