#!/usr/bin/env bash
# Set everything up and run every check: lint, types, tests (the browser test included).
source "$(dirname "$0")/env.sh" requirements-dev.txt
if ! command -v chromium >/dev/null 2>&1; then
  # The end-to-end test drives Debian's Chromium; install it where we may (CI runs as root).
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium for the browser test"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "== chromium is missing and cannot be installed here: the browser test will say so and skip"
  fi
fi
if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  # The PostgreSQL tests start a throwaway server from Debian's package.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing postgresql for the PostgreSQL tests"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "== PostgreSQL's server is missing and cannot be installed here: its tests will say so and skip"
  fi
fi
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
# A hard limit on the whole run (it takes minutes): a process left hanging must fail the
# run with a message, not stall CI until its own limit.
timeout --kill-after=30 3000 .venv/bin/python -m pytest "$@" || {
  rc=$?
  [ "$rc" = 124 ] && echo "pytest did not finish within 50 minutes; a test or a process it started hangs" >&2
  exit "$rc"
}
