#!/usr/bin/env bash
# Set everything up and run every check: lint, types, tests.
source "$(dirname "$0")/env.sh" requirements-dev.txt
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
