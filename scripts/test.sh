#!/usr/bin/env bash
# The README's test command: installs what the tests need, starts the services that are not running,
# runs the whole suite (unit, integration, fault, browser, bench smoke). Fails when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${KITT_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
stamp="$VENV/.kitt-test-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e ".[test,otel]" && touch "$stamp"
fi

bash scripts/services.sh

marks=${KITT_TEST_MARKS:-}
if [ -n "$marks" ]; then
  exec "$VENV/bin/python" -m pytest -m "$marks" "$@"
fi
exec "$VENV/bin/python" -m pytest "$@"
