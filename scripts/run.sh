#!/usr/bin/env bash
# Set everything up and open the dashboard (http://localhost:8501) on ./steerlab.db
# (or $STEERLAB_DB). Extra arguments go to `streamlit run`, e.g. --server.port 8600.
source "$(dirname "$0")/env.sh" requirements.txt
exec .venv/bin/python -m streamlit run dashboard/app.py --browser.gatherUsageStats false "$@"
