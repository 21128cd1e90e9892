#!/usr/bin/env bash
# The project's test command (README): set up .venv if needed, then run the whole suite,
# the end-to-end tests against a real Label Studio included.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# The queue tests run a real redis-server; CI machines are fresh, root, and reach Debian's packages.
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 redis-server) >/dev/null
  else
    echo "tests/run.sh: redis-server is missing; install it (e.g. apt-get install redis-server)" >&2
  fi
fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt -e . 2>&1 | grep -v "^WARNING: Location" || true
# The browser tests drive Debian's chromium (Playwright's own browser download is not reachable).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "tests/run.sh: /usr/bin/chromium is missing; install Debian's chromium (apt-get install chromium)" >&2
  fi
fi
pytest=(.venv/bin/python -m pytest -q -ra)
if [ $# -gt 0 ]; then
  exec "${pytest[@]}" --durations=15 "$@"
fi
# The whole suite. The outage test spends 3 minutes waiting for a Label Studio it stopped; it runs
# beside the rest (its own Label Studio, Redis, ports and temporary folder), so that wait costs no
# wall time. Both runs must pass; the outage run's report follows the main one.
outage=tests/e2e/test_writeback_outage.py
outage_log=$(mktemp)
"${pytest[@]}" -p no:cacheprovider --basetemp "$(mktemp -d)" "$outage" >"$outage_log" 2>&1 &
outage_pid=$!
trap 'kill "$outage_pid" 2>/dev/null' INT TERM
status=0
"${pytest[@]}" --durations=15 --ignore "$outage" || status=$?
wait "$outage_pid" || status=$?
echo "---- $outage (run beside the rest)"
cat "$outage_log"
exit "$status"
