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
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
