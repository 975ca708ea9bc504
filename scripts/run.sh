#!/usr/bin/env bash
# Set everything up and open the dashboard (http://localhost:8501) on ./steerlab.db
# (or $STEERLAB_DB), with one local worker process beside it: the dashboard only queues
# runs, the worker runs them (more workers, on any host: `steerlab worker --db URL`).
# STEERLAB_EXECUTOR=ray makes that worker run each run on the Ray cluster in RAY_ADDRESS
# (or on a local Ray instance): see "Running on a cluster" in the README.
# Extra arguments go to `streamlit run`, e.g. --server.port 8600. Stopping the dashboard
# (Ctrl-C) stops the worker too; its run goes back to the queue and resumes later.
source "$(dirname "$0")/env.sh" requirements.txt
.venv/bin/python -m engine worker --create &
worker=$!
.venv/bin/python -m streamlit run dashboard/app.py --browser.gatherUsageStats false "$@" &
dashboard=$!
# Background jobs of a script ignore Ctrl-C, so the script forwards it (and any TERM) to both.
trap 'kill -TERM "$dashboard" "$worker" 2>/dev/null' INT TERM
trap 'kill -TERM "$worker" 2>/dev/null; wait "$worker" 2>/dev/null' EXIT
wait "$dashboard"
status=$?
wait "$dashboard" 2>/dev/null  # after a trap, the first wait returns before the dashboard has exited
exit "$status"
