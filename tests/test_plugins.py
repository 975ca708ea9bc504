"""Third-party methods and scorers through entry points: a real plugin distribution, in a real process.

The plugin is a package plus a ``*.dist-info`` folder with ``entry_points.txt`` in a
temporary folder put on the path of a fresh Python process, exactly as an installed
package looks to :mod:`importlib.metadata`. Beside the good method and scorer it declares
a plugin that cannot be imported, one that is not a method, one that reuses a built-in
name and one without a settings declaration: each is skipped with a warning, and SteerLab
keeps working.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

from tests.conftest import HF_CACHE, ROOT, TINYSTORIES, needs_models

SCALE_METHOD = """
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from engine.declaration import LAYERS, Settings, number
from engine.methods.base import PreparedEdit, SteeringMethod


class ScaleSettings(Settings):
    layers: Annotated[tuple[int, ...], LAYERS] = Field(description="Layers whose output is scaled.", examples=[[0]])
    factor: Annotated[float, number(0.0, 10.0)] = Field(1.0, description="Multiplier of the hidden states.")
    # Plainly typed, without a SteerLab check: pydantic validates it.
    shift: float = Field(0.0, ge=-1.0, le=1.0, description="Added to every hidden state after scaling.")


@dataclass(frozen=True)
class ScaleHidden(SteeringMethod):
    name = "scale_hidden"
    title = "Scale hidden states"
    summary = "Multiply the hidden states at the chosen layers by a factor."
    settings = ScaleSettings

    layer_list: tuple[int, ...]
    factor: float
    shift: float

    @classmethod
    def from_settings(cls, settings):
        return cls(settings.layers, settings.factor, settings.shift)

    @property
    def layers(self):
        return self.layer_list

    def prepare(self, model, vectors):
        return _Scaled(self.layer_list, self.factor, self.shift)


class _Scaled(PreparedEdit):
    def __init__(self, layers, factor, shift):
        self.layers, self._factor, self._shift = layers, factor, shift

    def apply(self, layer, hidden, masks):
        return hidden * self._factor + self._shift
"""

LENGTH_SCORER = """
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from engine.declaration import Settings, whole
from engine.scorers.base import Scorer


class LengthSettings(Settings):
    per: Annotated[int, whole(1, 1000)] = Field(1, description="Count words per this many.")


@dataclass(frozen=True)
class LengthScorer(Scorer):
    kind = "length"
    summary = "Number of words in the output."
    settings = LengthSettings

    name: str
    per: int = 1

    @classmethod
    def from_settings(cls, name, settings):
        return cls(name, settings.per)

    def score(self, texts, references=None):
        return [len(t.split()) / self.per for t in texts]
"""

ENTRY_POINTS = """
[steerlab.methods]
scale_hidden = steerlab_demo.scale:ScaleHidden
broken = steerlab_demo.broken:Anything
not_a_method = steerlab_demo.length:LengthScorer
add = steerlab_demo.clash:Add

[steerlab.scorers]
length = steerlab_demo.length:LengthScorer
undeclared = steerlab_demo.undeclared:Undeclared
"""

# Runs in the fresh process: parse an experiment that uses the plugins, steer the real
# tiny model with the plugin's edit and score its outputs with the plugin's scorer.
CHECK = f"""
import json, logging
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
from engine.fields import Where
from engine.generation import Decoding, generate
from engine.methods import registry
from engine.models import load_model
from engine.scorers import registry as scorer_registry
from engine.spec import parse_experiment
from engine.spec_schema import experiment_json_schema
from engine.steering import BatchSteering

raw = {{
    "name": "plugins", "model": "{TINYSTORIES}", "prompts": ["Once upon a time, there was a little bird who"],
    "variants": [{{"name": "scaled", "interventions": [{{"method": "scale_hidden", "layers": [0, 1], "factor": 0.2}}]}}],
    "scorers": [{{"name": "words", "kind": "length"}}],
}}
spec = parse_experiment(raw, Where("plugins.yaml"))
again = parse_experiment(spec.to_dict(), Where("stored"))
model = load_model("{TINYSTORIES}", device="cpu")
edit = spec.variants[0].interventions[0].prepare(model, {{}})
prompt = [list(model.tokenizer(spec.prompts[0]).input_ids)]
decoding = Decoding(max_new_tokens=12)
plain = model.tokenizer.batch_decode(generate(model, prompt, decoding), skip_special_tokens=True)
steered = model.tokenizer.batch_decode(
    generate(model, prompt, decoding, steering=BatchSteering(model, [[edit]])), skip_special_tokens=True
)
bad = []
for setting in ({{"factor": 99}}, {{"shift": 5}}):
    edit_raw = {{"method": "scale_hidden", "layers": [0], **setting}}
    try:
        parse_experiment({{**raw, "variants": [{{"name": "v", "interventions": [edit_raw]}}]}}, Where("plugins.yaml"))
    except Exception as exc:
        bad.append(str(exc))
schema = experiment_json_schema()
print(json.dumps({{
    "methods": sorted(registry()), "scorers": sorted(scorer_registry()),
    "fields": [[f.name, f.kind] for f in registry()["scale_hidden"].fields],
    "stored": spec.to_dict()["variants"][0]["interventions"], "round_trip": again.to_dict() == spec.to_dict(),
    "plain": plain, "steered": steered, "scores": spec.scorers[0].score(steered), "bad": bad,
    "schema_methods": sorted(schema["$defs"]["method_scale_hidden"]["properties"]),
}}))
"""


def _install_plugin(site: Path) -> None:
    package = site / "steerlab_demo"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "scale.py").write_text(SCALE_METHOD)
    (package / "length.py").write_text(LENGTH_SCORER)
    (package / "broken.py").write_text("import a_dependency_that_is_not_installed\n")
    (package / "clash.py").write_text(
        dedent("""
        from engine.methods.add import AddVector

        class Add(AddVector):
            name = "add"
        """)
    )
    (package / "undeclared.py").write_text(
        dedent("""
        from engine.scorers.base import Scorer

        class Undeclared(Scorer):
            kind = "undeclared"
            summary = "A scorer written without a settings declaration."

            @classmethod
            def from_settings(cls, name, settings):
                return cls()

            def score(self, texts, references=None):
                return [0.0 for _ in texts]
        """)
    )
    info = site / "steerlab_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: steerlab-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)


@needs_models
def test_plugin_method_and_scorer_work_and_broken_plugins_are_skipped(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install_plugin(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "HF_HUB_CACHE": str(HF_CACHE)}
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "scale_hidden" in result["methods"] and "add" in result["methods"]
    assert "broken" not in result["methods"] and "not_a_method" not in result["methods"]
    assert "length" in result["scorers"] and "undeclared" not in result["scorers"]
    # The plugin's one declaration gives the form fields, the stored data and the schema.
    assert result["fields"] == [["layers", "layers"], ["factor", "float"], ["shift", "float"]]
    assert result["stored"] == [{"method": "scale_hidden", "layers": [0, 1], "factor": 0.2, "shift": 0.0}]
    assert result["round_trip"]
    assert result["schema_methods"] == ["factor", "layers", "method", "shift"]
    assert result["bad"] == [
        "plugins.yaml, field variants[0].interventions[0].factor: is 99.0, above the largest allowed value 10.0; "
        "give 10.0 or less.",
        "plugins.yaml, field variants[0].interventions[0].shift: Input should be less than or equal to 1; "
        "fix the value.",
    ]
    # The plugin's edit really steers the model, and its scorer really scores.
    assert result["steered"] != result["plain"]
    assert result["scores"] == [len(result["steered"][0].split())]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING engine.plugins")]
    assert len(warnings) == 4, done.stderr
    assert any("'broken'" in w and "ModuleNotFoundError" in w and "steerlab-demo" in w for w in warnings)
    assert any("'not_a_method'" in w and "not a SteeringMethod subclass" in w for w in warnings)
    assert any("'add'" in w and "two steering methods are named 'add'" in w for w in warnings)
    assert any("'undeclared'" in w and "declares no settings" in w for w in warnings)
