"""Models from GGUF files, folders and hub ids: references, errors, provenance, the cache, the memory check.

Real files throughout: the shared SmolLM2 GGUF file, the two story models, and tiny GGUF files
written here with the gguf package's own writer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from jsonschema import Draft202012Validator

from engine.errors import SteerLabError
from engine.experiment_file import load_experiment_file, parse_experiment_text
from engine.memory_estimate import estimate_memory, gguf_shape, parse_size
from engine.model_cache import ModelCache
from engine.model_config import config_facts
from engine.model_reference import check_gguf_file
from engine.model_source import _HASHES, describe_file, file_sha256
from engine.models import cached_models, load_model
from engine.spec_schema import experiment_json_schema
from service.export import export_data
from service.report import html_report
from service.run_options import RunOptions
from service.running import run_spec
from tests.conftest import SMOLLM2, STORIES260K, TINYSTORIES, needs_models

# From the shared folder's README.
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def one_sentence(exc: pytest.ExceptionInfo[SteerLabError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.endswith(".")
    return message


def write_gguf(path: Path, architecture: str) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch=architecture)
    writer.add_block_count(1)
    writer.add_embedding_length(4)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> ModelCache[object]:
    """A cache of its own, so a test that evicts or refuses leaves the session's models cached."""
    import engine.models

    cache: ModelCache[object] = ModelCache()
    monkeypatch.setattr(engine.models, "_CACHE", cache)
    return cache


# --- references -------------------------------------------------------------------------------------


def experiment_text(model: object) -> str:
    return yaml.safe_dump({"name": "x", "model": model, "prompts": ["hi"], "variants": [{"name": "baseline"}]})


def test_mapping_form_is_stored_as_one_path_relative_to_the_experiment_file(tmp_path: Path) -> None:
    folder = tmp_path / "experiments"
    folder.mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").write_bytes(b"GGUF")
    file = folder / "x.yaml"
    file.write_text(experiment_text({"path": "../models", "gguf_file": "m.gguf"}))
    assert load_experiment_file(file).model == str(tmp_path / "models" / "m.gguf")
    file.write_text(experiment_text("../models/m.gguf"))
    assert load_experiment_file(file).model == str(tmp_path / "models" / "m.gguf")
    # Hub ids (and hub GGUF files) stay as written.
    for hub in (TINYSTORIES, "org/repo/model.Q4_K_M.gguf"):
        file.write_text(experiment_text(hub))
        assert load_experiment_file(file).model == hub
    # An upload has no folder: the mapping still becomes one string.
    spec = parse_experiment_text(experiment_text({"path": "org/repo", "gguf_file": "m.gguf"}), "upload", None)
    assert spec.model == "org/repo/m.gguf"


def test_mapping_form_errors_name_the_field_and_the_schema_accepts_both_forms() -> None:
    with pytest.raises(SteerLabError) as exc:
        parse_experiment_text(experiment_text({"path": "x", "gguf_file": "m.bin"}), "x.yaml", None)
    assert "model.gguf_file" in one_sentence(exc) and ".gguf" in str(exc.value)
    with pytest.raises(SteerLabError) as exc:
        parse_experiment_text(experiment_text({"path": "x", "file": "m.gguf"}), "x.yaml", None)
    assert "model.file" in one_sentence(exc)
    validator = Draft202012Validator(experiment_json_schema())
    for model in (TINYSTORIES, {"path": "folder", "gguf_file": "m.gguf"}):
        assert not list(validator.iter_errors(yaml.safe_load(experiment_text(model))))


# --- GGUF errors, each one sentence ----------------------------------------------------------------------


def test_missing_gguf_file(fresh_cache: object, tmp_path: Path) -> None:
    with pytest.raises(SteerLabError) as exc:
        load_model(str(tmp_path / "nowhere.gguf"), "cpu")
    assert "does not exist" in one_sentence(exc) and "nowhere.gguf" in str(exc.value)
    assert config_facts(str(tmp_path / "nowhere.gguf")) is None  # pages fall back to loading, which explains
    with pytest.raises(SteerLabError) as exc:
        load_model("nobody/no-repo/model.Q4_K_M.gguf", "cpu")  # a hub repository's file, not in the cache
    assert "is not on disk" in one_sentence(exc) and "repository 'nobody/no-repo'" in str(exc.value)


def test_a_file_that_is_not_gguf(fresh_cache: object, tmp_path: Path) -> None:
    fake = tmp_path / "notes.gguf"
    fake.write_text("these are my notes, not a model\n")
    with pytest.raises(SteerLabError) as exc:
        load_model(str(fake), "cpu")
    assert "is not a GGUF file" in one_sentence(exc) and "b'thes'" in str(exc.value)
    folder = tmp_path / "folder.gguf"
    folder.mkdir()
    with pytest.raises(SteerLabError) as exc:
        load_model(str(folder), "cpu")
    assert "is a folder" in one_sentence(exc)


def test_an_architecture_transformers_cannot_load_from_gguf(fresh_cache: object, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "odd.gguf", "mamba-unknown")
    with pytest.raises(SteerLabError) as exc:
        load_model(str(path), "cpu")
    message = one_sentence(exc)
    assert "'mamba-unknown'" in message and "cannot load from GGUF" in message and "llama" in message
    assert "general" not in message


def test_a_hub_repositorys_gguf_file_is_read_from_the_hub_cache(
    fresh_cache: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from huggingface_hub import constants

    from engine.model_source import describe_hub

    revision = "a" * 40
    repo = tmp_path / "models--org--repo"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    write_gguf(snapshot / "odd.gguf", "mamba-unknown")
    (snapshot / "notes.gguf").write_text("hello")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    # transformers itself found the cached file: its architecture check is what refuses it.
    with pytest.raises(SteerLabError) as exc:
        load_model("org/repo/odd.gguf", "cpu")
    assert "'mamba-unknown'" in one_sentence(exc)
    with pytest.raises(SteerLabError) as exc:
        load_model("org/repo/notes.gguf", "cpu")
    assert "is not a GGUF file" in one_sentence(exc)
    described = describe_hub("org/repo", "odd.gguf")
    assert described["kind"] == "hub-gguf" and described["revision"] == revision
    assert described["sha256"] == file_sha256(snapshot / "odd.gguf")


def test_gguf_package_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", "llama")
    monkeypatch.setitem(sys.modules, "gguf", None)  # what an environment without the package gives
    with pytest.raises(SteerLabError) as exc:
        check_gguf_file(str(path), path)
    assert "pip install gguf" in one_sentence(exc)


# --- provenance ------------------------------------------------------------------------------------------


def test_gguf_hash_is_the_files_and_computed_once_per_version(tmp_path: Path) -> None:
    assert describe_file(Path(SMOLLM2)) == {
        "kind": "gguf",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "bytes": Path(SMOLLM2).stat().st_size,
        "sha256": SMOLLM2_SHA256,
    }
    copy = tmp_path / "m.gguf"
    copy.write_bytes(b"GGUF one")
    first = file_sha256(copy)
    entries = len(_HASHES)
    assert file_sha256(copy) == first and len(_HASHES) == entries  # reused, not hashed again
    copy.write_bytes(b"GGUF two, longer")  # another size: another version
    assert file_sha256(copy) != first and len(_HASHES) == entries + 1


@needs_models
def test_a_run_records_the_model_source_with_the_experiment(store: object, tmp_path: Path, stories260k: object) -> None:
    file = tmp_path / "x.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "name": "src",
                "model": str(STORIES260K),
                "prompts": ["Once upon a time"],
                "generation": {"max_new_tokens": 2, "do_sample": False},
                "variants": [{"name": "baseline"}],
            }
        )
    )
    run_spec(store, load_experiment_file(file), str(file), RunOptions(device="cpu"))  # type: ignore[arg-type]
    source = export_data(store, "src")["experiment"]["model_source"]  # type: ignore[arg-type]
    assert source["kind"] == "folder" and len(source["config_sha256"]) == 64
    assert f"config.json sha256 {source['config_sha256']}" in html_report(store, "src", bootstrap_rounds=10)  # type: ignore[arg-type]


def test_loaded_gguf_model_carries_its_hash_and_layer_devices(smollm2: object) -> None:
    from engine.models import LoadedModel

    assert isinstance(smollm2, LoadedModel)
    assert smollm2.source["sha256"] == SMOLLM2_SHA256
    assert {smollm2.layer_device(i) for i in range(smollm2.n_layers)} == {torch.device("cpu")}
    assert config_facts(SMOLLM2) is not None and config_facts(SMOLLM2).n_layers == 30  # type: ignore[union-attr]


# --- the cache -------------------------------------------------------------------------------------------


@needs_models
def test_a_cache_of_one_evicts_and_held_models_keep_working(
    fresh_cache: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEERLAB_MODEL_CACHE_SIZE", "1")
    first = load_model(str(STORIES260K), "cpu")
    assert cached_models() == [str(STORIES260K)]
    assert load_model(str(STORIES260K), "cpu") is first  # a hit
    second = load_model(TINYSTORIES, "cpu")
    assert cached_models() == [TINYSTORIES]  # the first was evicted
    ids = first.tokenizer("Once upon a time", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(first.model(ids).logits).all()  # still usable by whoever holds it
    assert load_model(str(STORIES260K), "cpu") is not first  # loaded again after eviction
    assert second is not None
    monkeypatch.setenv("STEERLAB_MODEL_CACHE_SIZE", "none")
    with pytest.raises(SteerLabError) as exc:
        load_model(TINYSTORIES, "cpu")
    assert "STEERLAB_MODEL_CACHE_SIZE" in one_sentence(exc)


# --- memory estimate and big-model options -------------------------------------------------------------


def test_smollm2_shape_from_the_gguf_file() -> None:
    shape = gguf_shape(Path(SMOLLM2))
    assert (shape.parameters, shape.layers, shape.hidden, shape.vocab) == (134_515_008, 30, 576, 49_152)
    assert shape.kv_width == 3 * 64 and shape.intermediate == 1536
    estimate = estimate_memory(shape, torch.float32, batch_size=8, dequantising=True)
    assert estimate.weight_bytes == 134_515_008 * 4 == estimate.loading_bytes
    quantized = estimate_memory(shape, torch.bfloat16, "4bit", batch_size=8)
    assert quantized.weight_bytes < estimate_memory(shape, torch.bfloat16, batch_size=8).weight_bytes
    assert parse_size("2GB") == 2 * 10**9 and parse_size("1.5 GiB") == 3 * 2**29 and parse_size("123") == 123


def test_a_model_that_will_not_fit_is_refused_before_loading(
    fresh_cache: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEERLAB_MAX_MEMORY", "300MB")
    with pytest.raises(SteerLabError) as exc:
        load_model(SMOLLM2, "cpu", batch_size=4)
    message = one_sentence(exc)
    assert "needs about" in message and "0.28 GiB is allowed by STEERLAB_MAX_MEMORY" in message
    assert "--quantize" in message and "--batch-size" in message and "batch of 4" in message
    assert cached_models() == []  # nothing loaded
    monkeypatch.setenv("STEERLAB_MAX_MEMORY", "lots")
    with pytest.raises(SteerLabError) as exc:
        load_model(SMOLLM2, "cpu")
    assert "STEERLAB_MAX_MEMORY='lots' is not a size" in one_sentence(exc)


def test_gpu_only_options_are_one_sentence_on_the_cpu(fresh_cache: object) -> None:
    with pytest.raises(SteerLabError) as exc:
        load_model(TINYSTORIES, "cpu", quantize="4bit")
    assert "needs a CUDA GPU" in one_sentence(exc)
    if not torch.cuda.is_available():
        with pytest.raises(SteerLabError) as exc:
            load_model(TINYSTORIES, "multi")
        assert "torch sees no CUDA GPU" in one_sentence(exc)
    with pytest.raises(SteerLabError) as exc:
        load_model(TINYSTORIES, "cpu", quantize="3bit")
    assert "not one of 4bit, 8bit" in one_sentence(exc)


def test_run_options_keep_quantize_through_the_queue() -> None:
    options = RunOptions(batch_size=4, device="cuda", dtype="bfloat16", quantize="8bit")
    assert RunOptions.from_json(options.to_json()) == options
    assert RunOptions.from_json('{"batch_size": 2}').quantize is None  # runs queued before this version


# --- the converted copy of a GGUF file -----------------------------------------------------------------


def test_a_gguf_file_loads_from_its_converted_copy_with_the_same_logits(
    smollm2: object, fresh_cache: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from engine import gguf_cache
    from engine.models import LoadedModel

    assert isinstance(smollm2, LoadedModel)
    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path))
    sha256 = smollm2.source["sha256"]
    # Half-written copies never count: only a folder renamed into place with its marker does.
    gguf_cache.converted_folder(sha256, torch.float32).mkdir(parents=True)
    assert gguf_cache.find_converted(sha256, torch.float32) is None
    gguf_cache.converted_folder(sha256, torch.float32).rmdir()
    assert gguf_cache.save_converted(smollm2.model, sha256, torch.float32) is not None
    assert not [p for p in (tmp_path / "gguf").iterdir() if p.name.startswith(".")]  # no temporary folder left
    again = load_model(SMOLLM2, "cpu")
    assert again is not smollm2 and again.source == smollm2.source
    ids = smollm2.tokenizer("Hello, how are you?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(again.model(ids).logits, smollm2.model(ids).logits)
    # A damaged copy is passed over (the GGUF file is read instead), not an error.
    (gguf_cache.converted_folder(sha256, torch.float32) / "model.safetensors").write_bytes(b"not safetensors")
    assert gguf_cache.load_converted(sha256, torch.float32, {}) is None
    monkeypatch.setenv("STEERLAB_GGUF_CACHE_MAX", "0")  # off: nothing is found or written
    assert gguf_cache.find_converted(sha256, torch.float32) is None


def test_the_header_reader_agrees_with_the_gguf_package(tmp_path: Path) -> None:
    import gguf

    from engine.gguf_header import read_gguf_header

    path = write_gguf(tmp_path / "m.gguf", "llama")
    header = read_gguf_header(path)
    reader = gguf.GGUFReader(str(path))
    assert header.metadata["general.architecture"] == "llama" and header.metadata["llama.block_count"] == 1
    assert [(n, d) for n, d in header.tensors] == [
        (str(t.name), tuple(int(x) for x in t.shape)) for t in reader.tensors
    ]
