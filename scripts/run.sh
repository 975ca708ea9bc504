#!/usr/bin/env bash
# Set everything up and run the example experiment from the command line.
source "$(dirname "$0")/env.sh" requirements.txt
.venv/bin/python -m engine run experiments/tinystories_mood.yaml "$@"
