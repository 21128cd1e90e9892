#!/usr/bin/env bash
# The project's test command (README): set up .venv if needed, then run the whole suite,
# the end-to-end tests against a real Label Studio included.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt -e . 2>&1 | grep -v "^WARNING: Location" || true
exec .venv/bin/python -m pytest -q -ra --durations=15 "$@"
