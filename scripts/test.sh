#!/usr/bin/env bash
# Installs what the tests need into .venv and runs lint, types and the test suite.
# The README's test command and .ci/run both call exactly this script.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
# The official JavaScript SDK, pinned by tests/js/package-lock.json, for the JS end-to-end test.
npm ci --no-audit --no-fund --prefix tests/js

# The tests use a real PostgreSQL on 127.0.0.1:5432; start the machine's own if it is down.
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  fi
fi

# The budget tests use a real Redis on 127.0.0.1:6379; install it (CI) and start it if needed.
if ! command -v redis-server >/dev/null; then
  apt-get update && apt-get install -y redis-server
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes
  for _ in $(seq 50); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
    sleep 0.1
  done
fi

# The usage page is tested in Debian's Chromium, driven by Playwright (no browser download);
# the observability tests run Debian's Prometheus (and its promtool) on loopback, started by
# the tests themselves. Install what is missing (CI).
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
{ command -v promtool >/dev/null && command -v prometheus >/dev/null; } || missing+=(prometheus)
command -v wrk >/dev/null || missing+=(wrk)  # the benchmark's smoke run
command -v valgrind >/dev/null || missing+=(valgrind)  # instructions per call (callgrind)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# One worker per core: each has its own PostgreSQL database, Redis key prefix and ports.
.venv/bin/pytest -q -p no:cacheprovider -n auto "$@"
