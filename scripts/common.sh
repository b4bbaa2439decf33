# shellcheck shell=bash
# Shared by install.sh and uninstall.sh (sourced after they parse their options into DRY_RUN).
say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }

# Every change goes through run: printed (and skipped with --dry-run), then executed.
run() {
    printf '+'; printf ' %q' "$@"; printf '\n'
    ((DRY_RUN)) || "$@"
}

# Real runs need root; a dry run only prints.
require_root_unless_dry_run() {
    if ((!DRY_RUN)) && ((EUID != 0)); then
        echo "$1: run as root (or try --dry-run)" >&2
        exit 1
    fi
    if ((DRY_RUN)); then
        say "dry run: nothing is changed"
    fi
}
