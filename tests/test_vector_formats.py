"""Vectors for other tools and from them: llama.cpp control-vector GGUF, safetensors with a model card,
repeng and steering-vectors imports, the norm convention, and hostile vector files."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from db import repository as repo
from engine.errors import SteerLabError
from engine.experiment_file import load_experiment_file
from engine.fields import Where
from engine.spec import parse_experiment
from engine.vector_formats import load_any_vector, small_coefficient_warnings, variant_deltas
from engine.vectors import BAKED, MEAN_DIFFERENCE, UNIT_NORM, UNKNOWN, SteeringVector
from service.catalog import get_experiment
from service.cli import main
from service.running import RunOptions, run_experiment_file
from service.vector_export import export_variant
from service.vector_store import read_vector_files, warn_small_coefficients
from tests.conftest import TINYSTORIES

PAIRS = """
    pairs:
      - ["Lily was very sad and she cried.", "Lily was very happy and she smiled."]
      - ["Tom felt lonely and upset.", "Tom felt cheerful and glad."]
      - ["It was a sad, gloomy day.", "It was a happy, sunny day."]
"""


def _experiment(name: str, vector: str, coefficient: float) -> str:
    return f"""
name: {name}
model: {TINYSTORIES}
prompts: ["Once upon a time, there was a little bird who ", "Sam's tower of blocks fell down. He "]
generation: {{max_new_tokens: 8, do_sample: false}}
# One short probe and neutral prompt: the side-effect figures are not what these tests are about.
probe_prompt: Once
neutral_prompts: [Once]
vectors:
  sad:{vector}
variants:
  - name: baseline
  - name: sad_l1
    interventions:
      - {{method: add, vector: sad, layers: [1], coefficient: {coefficient}, scope: all}}
"""


def _texts(store: Any, name: str) -> dict[tuple[str, int], str]:
    with store.session() as session:
        rows = repo.generation_rows(session, get_experiment(session, name).id)
    return {(r.variant, r.prompt_index): r.text for r in rows}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> tuple[Any, Path, SteeringVector]:
    """A greedy experiment with the sad vector added at layer 1 (x2), run once for the module."""
    from db.store import Store

    folder = tmp_path_factory.mktemp("vectors")
    (folder / "exp.yaml").write_text(_experiment("orig", PAIRS, 2.0), encoding="utf-8")
    store = Store(str(folder / "store.db"))
    run_experiment_file(store, folder / "exp.yaml", RunOptions(device="cpu"))
    with store.session() as session:
        data = next(v.data for v in get_experiment(session, "orig").vectors if v.name == "sad")
    assert data is not None
    return store, folder, SteeringVector.from_bytes(data, "stored", "sad")


def test_gguf_export_is_a_llama_cpp_control_vector_and_imports_exactly(ran: Any) -> None:
    store, folder, sad = ran
    exported = export_variant(store, "orig", "sad_l1", "gguf")
    path = folder / exported.filename
    path.write_bytes(exported.content)
    reader = gguf.GGUFReader(str(path))

    def field(key: str) -> Any:
        found = reader.get_field(key)
        assert found is not None, key
        return found.contents()

    assert field("general.architecture") == "controlvector"
    assert field("controlvector.model_hint") == "llama"  # the model's config.model_type
    assert field("controlvector.layer_count") == 1
    # SteerLab's layer 1 (block 1's output) is llama.cpp's direction.1: no shift, and no direction.0.
    assert [t.name for t in reader.tensors] == ["direction.1"]
    assert reader.tensors[0].tensor_type == gguf.GGMLQuantizationType.F32
    expected = 2.0 * sad.for_layer(1)
    assert torch.equal(torch.from_numpy(np.array(reader.tensors[0].data)), expected)
    back = load_any_vector(path)
    assert back.layers == (1,) and torch.equal(back.directions[0], expected)
    assert back.norm_convention == BAKED and back.extra["coefficient"] == "2.0"
    assert back.extra["model_hint"] == "llama" and back.model_id == TINYSTORIES


def test_an_experiment_reading_the_exported_gguf_steers_like_the_original(ran: Any) -> None:
    store, folder, _ = ran
    (folder / "sad.gguf").write_bytes(export_variant(store, "orig", "sad_l1", "gguf").content)
    (folder / "copy.yaml").write_text(_experiment("copy", " {file: sad.gguf}", 1.0), encoding="utf-8")
    run_experiment_file(store, folder / "copy.yaml", RunOptions(device="cpu"))
    original, copy = _texts(store, "orig"), _texts(store, "copy")
    assert original[("sad_l1", 0)] != original[("baseline", 0)]  # the vector does steer
    assert copy == original


def test_safetensors_export_holds_layers_directions_and_a_model_card(ran: Any, capsys: Any) -> None:
    store, folder, sad = ran
    exported = export_variant(store, "orig", "sad_l1", "safetensors")
    with zipfile.ZipFile(io.BytesIO(exported.content)) as archive:
        names = sorted(archive.namelist())
        card = archive.read("orig_sad_l1/README.md").decode()
        data = archive.read("orig_sad_l1/sad_l1.safetensors")
    assert names == ["orig_sad_l1/README.md", "orig_sad_l1/sad_l1.gguf", "orig_sad_l1/sad_l1.safetensors"]
    front = card.split("---")[1]
    assert f"base_model: {TINYSTORIES}" in front and "- control-vector" in front and "library_name: steerlab" in front
    assert "coefficient | 2," in card and "orig" in card and "--control-vector sad_l1.gguf" in card
    tensors = load(data)
    assert set(tensors) == {"1", "directions"} and torch.equal(tensors["1"], 2.0 * sad.for_layer(1))
    again = SteeringVector.from_bytes(data, "export")
    assert again.layers == (1,) and torch.equal(again.directions, tensors["directions"])
    # The command line writes the same as a folder; a per-layer file imports to the same numbers.
    out = folder / "bundle"
    db = str(folder / "store.db")
    assert main(["vectors", "export", "orig", "sad_l1", "--format", "safetensors", "-o", str(out), "--db", db]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "sad_l1.gguf", "sad_l1.safetensors"]
    (folder / "layers.safetensors").write_bytes(save({"1": tensors["1"].clone()}))
    assert main(["vectors", "import", str(folder / "layers.safetensors"), "-o", str(folder / "l.safetensors")]) == 0
    assert torch.equal(load_any_vector(folder / "l.safetensors").directions[0], tensors["1"])
    assert main(["vectors", "export", "orig", "baseline", "-o", str(folder / "x.gguf"), "--db", db]) == 2
    assert "baseline variant with no steering edits" in capsys.readouterr().err


def _repeng_gguf(path: Path, directions: dict[int, np.ndarray], hint: str = "llama") -> None:
    """What repeng's ControlVector.export_gguf writes, line for line."""
    arch = "controlvector"
    writer = gguf.GGUFWriter(path, arch)
    writer.add_string(f"{arch}.model_hint", hint)
    writer.add_uint32(f"{arch}.layer_count", len(directions))
    for layer in directions:
        writer.add_tensor(f"direction.{layer}", directions[layer])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _unit(seed: int, size: int = 128) -> np.ndarray:
    row = np.random.default_rng(seed).standard_normal(size).astype(np.float32)
    return (row / np.linalg.norm(row)).astype(np.float32)


def test_repeng_gguf_and_steering_vectors_files_import_with_their_layers(tmp_path: Path, capsys: Any) -> None:
    repeng = {3: _unit(3), 1: _unit(1)}
    _repeng_gguf(tmp_path / "happy.gguf", repeng)
    assert main(["vectors", "import", str(tmp_path / "happy.gguf"), "-o", str(tmp_path / "happy.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert "2 layers (1, 3), hidden size 128" in printed and "norm convention: unit_norm" in printed
    vector = load_any_vector(tmp_path / "happy.safetensors")
    assert vector.layers == (1, 3) and vector.norm_convention == UNIT_NORM
    assert torch.equal(vector.for_layer(3), torch.from_numpy(repeng[3]))

    layer_activations = {0: torch.randn(128) * 3, 2: torch.randn(128) * 3}
    torch.save(layer_activations, tmp_path / "sv.pt")
    imported = load_any_vector(tmp_path / "sv.pt", "sv")
    assert imported.layers == (0, 2) and imported.norm_convention == MEAN_DIFFERENCE
    assert torch.equal(imported.for_layer(2), layer_activations[2])
    assert imported.extra["source_format"] == "steering-vectors"


def test_a_variant_of_several_edits_exports_one_summed_direction_per_steered_layer(tmp_path: Path) -> None:
    from engine.vector_formats import write_control_vector

    a, b = SteeringVector("a", torch.randn(4, 16), (0, 1, 2, 3)), SteeringVector("b", torch.randn(4, 16), (0, 1, 2, 3))
    edits = [
        {"method": "add", "vector": "a", "layers": [1, 3], "coefficient": 1.5},
        {"method": "add", "vector": "b", "layers": [3], "coefficient": -2.0},
    ]
    data = {"name": "e", "model": "m", "prompts": ["p"], "vectors": {n: {"pairs": [["x", "y"]]} for n in "ab"}}
    spec = parse_experiment({**data, "variants": [{"name": "both", "interventions": edits}]}, Where("test"))
    deltas = variant_deltas("e", spec.variants[0], {"a": a, "b": b})
    assert deltas.layers == (1, 3) and deltas.coefficient is None
    write_control_vector(deltas, tmp_path / "both.gguf", "llama")
    reader = gguf.GGUFReader(str(tmp_path / "both.gguf"))
    found = {t.name: torch.from_numpy(np.array(t.data)) for t in reader.tensors}
    assert sorted(found) == ["direction.1", "direction.3"]
    assert torch.equal(found["direction.1"], 1.5 * a.for_layer(1))
    assert torch.equal(found["direction.3"], 1.5 * a.for_layer(3) + -2.0 * b.for_layer(3))
    assert torch.equal(load_any_vector(tmp_path / "both.gguf").directions, deltas.deltas)
    assert not list(tmp_path.glob(".*part"))  # written through a temporary file, renamed into place


def test_what_llama_cpp_cannot_express_is_refused_naming_the_variant_and_why() -> None:
    from engine.vector_formats import check_llama_cpp

    vectors = {"v": SteeringVector("v", torch.randn(2, 8), (0, 1))}

    def refusal(intervention: dict[str, Any] | None) -> str:
        variant: dict[str, Any] = {"name": "x"}
        if intervention is not None:
            variant["interventions"] = [intervention]
        data = {"name": "e", "model": "m", "prompts": ["p"], "vectors": {"v": {"pairs": [["a", "b"]]}}}
        spec = parse_experiment({**data, "variants": [variant]}, Where("test"))
        with pytest.raises(SteerLabError) as caught:
            check_llama_cpp(variant_deltas("e", spec.variants[0], vectors))
        message = str(caught.value)
        assert message.count(". ") == 0 and "Variant 'x' of experiment 'e'" in message
        return message

    add = {"method": "add", "vector": "v", "layers": [1], "coefficient": 2.0}
    assert "ablate method" in refusal({"method": "ablate", "vector": "v", "layers": [1]})
    assert "norm-preserving" in refusal({**add, "method": "add_norm"})
    assert "only the generated tokens" in refusal({**add, "scope": "generated"})
    assert "layer 0" in refusal({**add, "layers": [0, 1]})
    assert "no steering edits" in refusal(None)


def _control_vector(path: Path, arch: str = "controlvector", rows: dict[str, np.ndarray] | None = None) -> Path:
    writer = gguf.GGUFWriter(path, arch)
    for name, row in (rows if rows is not None else {"direction.1": _unit(0)}).items():
        writer.add_tensor(name, row)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _gguf_text(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


class _Runs:
    """A pickle that would run a command when unpickled (and leave a file behind)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


HOSTILE = {
    "truncated gguf": (lambda p: p.write_bytes(_control_vector(p).read_bytes()[:60]), "not a readable GGUF file"),
    "a tensor declared far larger than the file": (
        lambda p: p.write_bytes(
            b"GGUF"
            + struct.pack("<IQQ", 3, 1, 1)
            + _gguf_text("general.architecture")
            + struct.pack("<I", 8)
            + _gguf_text("controlvector")
            + _gguf_text("direction.1")
            + struct.pack("<IQIQ", 1, 2**40, 0, 0)
            + bytes(64)
        ),
        "not a readable GGUF file",
    ),
    "garbage after the magic": (lambda p: p.write_bytes(b"GGUF" + os.urandom(200)), "not a readable GGUF file"),
    "a model, not a control vector": (
        lambda p: _control_vector(p, "llama", {"token_embd.weight": np.ones((4, 8), np.float32)}),
        "of architecture 'llama', not a control vector",
    ),
    "direction.0": (lambda p: _control_vector(p, rows={"direction.0": _unit(0)}), "direction.0"),
    "NaN direction": (
        lambda p: _control_vector(p, rows={"direction.1": np.full(8, np.nan, np.float32)}),
        "NaN or infinite",
    ),
    "two-dimensional direction": (
        lambda p: _control_vector(p, rows={"direction.2": np.ones((2, 8), np.float32)}),
        "not the one row",
    ),
    "no directions": (lambda p: _control_vector(p, rows={}), "without any direction"),
    "a pickle that runs a command": (
        lambda p: p.write_bytes(pickle.dumps({1: _Runs(p.with_suffix(".ran"))}, protocol=2)),
        "not a plain dict of tensors",
    ),
    "a list, not a dict": (lambda p: torch.save([torch.ones(8)], p), "holds a list"),
    "string keys that are not layers": (lambda p: torch.save({"weight": torch.ones(8)}, p), "not a layer number"),
    "negative layer": (lambda p: torch.save({-1: torch.ones(8)}, p), "counted from the last block"),
    "mixed sizes": (lambda p: torch.save({1: torch.ones(8), 2: torch.ones(9)}, p), "different sizes"),
    "integers": (lambda p: torch.save({1: torch.ones(8, dtype=torch.int64)}, p), "not floating point"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_vector_files_are_refused_in_one_sentence(tmp_path: Path, case: str) -> None:
    make, expected = HOSTILE[case]
    path = tmp_path / "bad.bin"
    make(path)
    with pytest.raises(SteerLabError) as caught:
        load_any_vector(path)
    message = str(caught.value)
    assert expected in message and message.count("; ") >= 1 and "\n" not in message
    assert not path.with_suffix(".ran").exists()  # nothing in the file was run


def test_size_limit_and_hidden_size_are_checked_before_use(tmp_path: Path, monkeypatch: Any, tiny: Any) -> None:
    _repeng_gguf(tmp_path / "big.gguf", {1: _unit(0, 64)})
    monkeypatch.setenv("STEERLAB_MAX_FILE_BYTES", "100")
    with pytest.raises(SteerLabError, match="over the limit of 100"):
        load_any_vector(tmp_path / "big.gguf")
    monkeypatch.delenv("STEERLAB_MAX_FILE_BYTES")
    (tmp_path / "e.yaml").write_text(
        f"name: e\nmodel: {TINYSTORIES}\nprompts: [a]\nvectors: {{v: {{file: big.gguf}}}}\n"
        "variants: [{name: s, interventions: [{method: add, vector: v, layers: [1], coefficient: 1}]}]\n",
        encoding="utf-8",
    )
    spec = load_experiment_file(tmp_path / "e.yaml")
    with pytest.raises(SteerLabError, match=r"hidden size 64 .* has hidden size 128"):
        read_vector_files(spec, tiny, "e.yaml")


def test_a_unit_norm_vector_with_a_tiny_coefficient_is_warned_about(tiny: Any, caplog: Any) -> None:
    unit = SteeringVector("u", torch.from_numpy(np.stack([_unit(0), _unit(1)])), (0, 1))
    assert (
        unit.norm_convention == UNIT_NORM and SteeringVector("r", torch.ones(2, 3), (0, 1)).norm_convention == UNKNOWN
    )

    def spec(coefficient: float) -> Any:
        return parse_experiment(
            {
                "name": "w",
                "model": TINYSTORIES,
                "prompts": ["a"],
                "vectors": {"u": {"file": "u.gguf"}},
                "variants": [
                    {"name": "weak", "interventions": [{"vector": "u", "layers": [1], "coefficient": coefficient}]}
                ],
            },
            Where("test"),
        )

    warnings = warn_small_coefficients("w", spec(0.001), tiny, {"u": unit})
    assert len(warnings) == 1 and "Variant 'weak' of experiment 'w' adds unit-norm vector 'u'" in warnings[0]
    assert warnings[0] in caplog.text
    assert warn_small_coefficients("w", spec(50.0), tiny, {"u": unit}) == []
    # Mean-difference vectors are not second-guessed: their units are the model's own.
    assert (
        small_coefficient_warnings(
            "w",
            spec(0.001).variants,
            {"u": SteeringVector("u", torch.ones(2, 128), (0, 1), method="mean_diff")},
            {1: 10.0},
        )
        == []
    )


def test_report_page_prepares_the_vector_download(ran: Any, monkeypatch: Any) -> None:
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    _, folder, _ = ran
    monkeypatch.setenv("STEERLAB_DB", str(folder / "store.db"))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/report.py")
    at.run()
    assert not at.exception and len(at.get("download_button")) == 5  # the vector file is made only when asked
    next(b for b in at.button if b.label == "Prepare the vector file").click().run()
    labels = [b.proto.label for b in at.get("download_button")]
    assert not at.exception and any(label.endswith("_sad_l1.gguf") for label in labels), labels
