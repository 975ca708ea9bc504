"""The benchmark command runs and reports every figure, SmolLM2's included (quick mode; no speed is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main
from tests.conftest import needs_models


@needs_models
def test_bench_quick_writes_all_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    for key in ("steer_overhead_ratio", "mixed_batch_speedup", "toggle_ms", "reversibility_max_abs_diff"):
        assert key in figures and figures[key] >= 0
    assert figures["reversibility_max_abs_diff"] == 0.0
    assert set(figures["models"]) == {"tinystories-656k", "gpt2-small-random", "smollm2-135m-instruct"}
    smollm2 = figures["models"]["smollm2-135m-instruct"]
    for key in ("steer_overhead_ratio", "plain_tokens_per_second", "steered_tokens_per_second", "mixing_cost_ratio"):
        assert smollm2[key] > 0
    assert figures["mixing_cost_ratio"] == smollm2["mixing_cost_ratio"]
    assert smollm2["reversibility_max_abs_diff"] == 0.0
    printed = capsys.readouterr().out
    assert "mixed batch" in printed and "variants mixed" in printed
