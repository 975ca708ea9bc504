"""The benchmark suite: run the suite's experiment files and gather the adaptation comparison."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from db.store import Store
from engine.experiment_file import load_experiment_file
from service.adaptation import adaptation_table
from service.running import RunOptions, run_experiment_file

SUITE_DIR = Path(__file__).resolve().parent.parent / "experiments" / "suite"
OFFLINE_SUFFIX = "_tinystories.yaml"  # tasks on the model that ships for offline use


def suite_files(everything: bool = False, only: str | None = None) -> list[Path]:
    files = sorted(SUITE_DIR.glob("*.yaml"))
    if not everything:
        files = [f for f in files if f.name.endswith(OFFLINE_SUFFIX)]
    if only:
        files = [f for f in files if only in f.stem]
    return files


def run_suite(
    store: Store, files: list[Path], options: RunOptions | None = None, log: Callable[[str], None] = lambda _line: None
) -> dict[str, Any]:
    results: dict[str, Any] = {"tasks": []}
    for path in files:
        spec = load_experiment_file(path)
        log(f"running {path.name} ({spec.name}) ...")
        run = run_experiment_file(store, path, options or RunOptions())
        for scorer in spec.scorers:
            rows = adaptation_table(store, spec.name, scorer.name)
            results["tasks"].append(
                {
                    "task": spec.name,
                    "file": str(path),
                    "run": run.status,
                    "scorer": scorer.name,
                    "methods": [
                        {
                            "variant": r.variant,
                            "method": r.kind,
                            "scope": r.scope,
                            "reversible": r.reversible,
                            "undo_logit_diff": r.undo_logit_diff,
                            "setup_seconds": r.setup_seconds,
                            "inference_overhead": r.inference_overhead,
                            "extra_parameters": r.extra_parameters,
                            "extra_bytes": r.extra_bytes,
                            "examples": r.examples,
                            "performance": {
                                "mean": r.performance.value,
                                "ci95": [r.performance.low, r.performance.high],
                                "n": r.performance.n,
                            },
                            "share_of_finetune_gain": None
                            if r.share_of_finetune_gain is None
                            else {
                                "value": r.share_of_finetune_gain.value,
                                "ci95": [r.share_of_finetune_gain.low, r.share_of_finetune_gain.high],
                                "prompts": r.share_of_finetune_gain.n,
                            },
                        }
                        for r in rows
                    ],
                }
            )
    return results
