"""Experiment definitions are read and checked without torch or transformers.

The store, the dashboard's forms and other front ends parse and validate definitions;
loading torch for that costs seconds and hundreds of megabytes, or is impossible where
torch is not installed. A fresh interpreter is the only place that shows what an import
pulls in, since this test process has torch loaded already.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ("torch", "transformers", "safetensors")

# Everything a front end does with a definition: parse every shipped file, round-trip its
# stored form, build the JSON Schema and the method and scorer registries (which import
# every built-in method and scorer module).
READ_DEFINITIONS = f"""
import json, sys
from pathlib import Path

import engine.experiment_file, engine.spec, engine.spec_schema, engine.sweep_config
from engine import methods, scorers
from engine.fields import Where

parsed = []
for path in sorted(Path("experiments").glob("*.yaml")):
    spec = engine.experiment_file.load_experiment_file(path)
    engine.spec.parse_experiment(spec.to_dict(), Where("round trip"))
    parsed.append(path.name)
engine.spec_schema.experiment_json_schema()
loaded = sorted(name for name in {HEAVY!r} if name in sys.modules)
print(json.dumps({{"parsed": parsed, "methods": sorted(methods.registry()), "scorers": sorted(scorers.registry()), "heavy": loaded}}))
"""


def test_reading_experiment_definitions_loads_no_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", READ_DEFINITIONS], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "tinystories_mood.yaml" in result["parsed"]
    assert {"add", "add_norm", "ablate", "conditional", "nudge"} <= set(result["methods"])
    assert {"words", "classifier"} <= set(result["scorers"])
    assert result["heavy"] == [], f"reading a definition imported {result['heavy']}"


def test_the_command_line_and_the_run_queue_start_without_torch() -> None:
    # `steerlab list`, `status`, `export`, `report` and the Run page's queue load no model,
    # so they must not pay for importing torch (seconds on a small machine).
    probe = (
        "import json, sys; import service.cli, service.jobs, service.run_options; "
        f"print(json.dumps(sorted(n for n in {HEAVY!r} if n in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
