# Sourced by the other scripts: a virtual environment with the project's requirements,
# and offline Hugging Face settings when the shared model cache sits beside the clone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REQS="${1:-requirements.txt}"

PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "SteerLab needs Python 3.11 or newer; $("$PY" --version) was found. Set PYTHON=/path/to/python3.11." >&2; exit 2; }

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Reinstall only when the requirement files changed.
stamp=".venv/.installed-$(cat requirements*.txt | sha256sum | cut -c1-16)-$(basename "$REQS")"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$REQS"
  touch "$stamp"
fi

if [ -d "$ROOT/../shared/hf-cache/hub" ]; then
  HF_HUB_CACHE="$(cd "$ROOT/../shared/hf-cache/hub" && pwd)"
  export HF_HUB_CACHE
  export HF_HUB_OFFLINE=1
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
