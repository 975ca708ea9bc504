"""What an experiment's ``model`` names, kept in one stored form: a string.

A model is a Hugging Face hub id (``org/name``), a local folder, or a GGUF file: a path
ending in ``.gguf`` (``folder/file.gguf``), a hub repository's GGUF file
(``org/repo/file.gguf``, loaded from the hub cache), or the mapping ``{path: folder or hub
id, gguf_file: name}``, which is stored as ``path/gguf_file`` so that ``spec.model`` is a
string everywhere (the store, hashes, pages, the command line).

GGUF files are checked before transformers sees them (exists, starts with the magic bytes
``GGUF``, the ``gguf`` package is installed), so each mistake is one sentence rather than a
traceback from deep inside the loader.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.errors import SteerLabError
from engine.fields import Where, as_str, check_keys, required

GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"

MODEL_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "minLength": 1},
        {
            "type": "object",
            "properties": {
                "path": {"type": "string", "minLength": 1, "description": "A folder or a hub id."},
                "gguf_file": {
                    "type": "string",
                    "pattern": "\\.[gG][gG][uU][fF]$",
                    "description": "The GGUF file's name.",
                },
            },
            "required": ["path", "gguf_file"],
            "additionalProperties": False,
        },
    ]
}


def parse_model_reference(raw: Any, where: Where) -> str:
    """The stored form of a file's ``model`` field (a string, or the ``{path, gguf_file}`` mapping)."""
    if isinstance(raw, Mapping):
        check_keys(raw, ("path", "gguf_file"), where)
        folder = as_str(required(raw, "path", where), where.child("path")).strip()
        name = as_str(required(raw, "gguf_file", where), where.child("gguf_file")).strip()
        if not is_gguf(name):
            where.child("gguf_file").fail(f"is '{name}', which does not end in {GGUF_SUFFIX}", "name the .gguf file")
        if "/" in name or "\\" in name:
            where.child("gguf_file").fail("holds a folder", "put the folder in 'path' and only the file's name here")
        return f"{folder.rstrip('/')}/{name}"
    return as_str(raw, where).strip()


def is_gguf(model_id: str) -> bool:
    return model_id.lower().endswith(GGUF_SUFFIX)


def split_gguf(model_id: str) -> tuple[str, str | None]:
    """``(folder or hub id, GGUF file name)`` of a model reference; the name is None unless it ends in .gguf."""
    if not is_gguf(model_id):
        return model_id, None
    path = Path(model_id)
    return str(path.parent), path.name


def looks_like_hub_gguf(model_id: str) -> bool:
    """``org/repo/file.gguf``: a hub repository's GGUF file, unless such a path exists on disk."""
    return (
        is_gguf(model_id)
        and model_id.count("/") == 2
        and not model_id.startswith((".", "/", "~"))
        and not Path(model_id).exists()
    )


def resolve_beside(model_id: str, base_dir: Path | None) -> str:
    """A relative model path in an experiment file, resolved against the file's folder when it lies there.

    Otherwise the reference is kept as written: a hub id, an absolute path, or (as before
    files could be anywhere) a path relative to the working directory.
    """
    if base_dir is None or os.path.isabs(model_id) or model_id.startswith("~"):
        return model_id
    candidate = base_dir / model_id
    if not candidate.exists():
        return model_id
    if Path(model_id).exists() and Path(model_id).resolve() == candidate.resolve():
        return model_id  # the same place either way: keep it as written (as stored before this rule)
    return os.path.normpath(candidate.absolute())


def check_gguf_file(model_id: str, path: Path) -> None:
    """One sentence for each way a GGUF file can be unusable before transformers reads it."""
    if not path.exists():
        raise SteerLabError(
            f"GGUF file '{model_id}' does not exist; check the path (in an experiment file it is relative "
            "to the file's folder, else to the working directory)."
        )
    if not path.is_file():
        raise SteerLabError(f"GGUF file '{model_id}' is a folder, not a file; name the .gguf file inside it.")
    try:
        with path.open("rb") as handle:
            head = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise SteerLabError(f"GGUF file '{model_id}' cannot be read ({exc.strerror}); check its permissions.") from exc
    if head != GGUF_MAGIC:
        raise SteerLabError(
            f"File '{model_id}' is not a GGUF file (it starts with {head!r}, not the magic bytes b'GGUF'); "
            "give a model file in llama.cpp's GGUF format, or a model folder or hub id."
        )
    require_gguf_package(model_id)


def require_gguf_package(model_id: str) -> None:
    try:
        import gguf  # noqa: F401  (only whether it imports)
    except ImportError as exc:
        raise SteerLabError(
            f"Loading the GGUF file '{model_id}' needs the gguf package, which is not installed; "
            "run `pip install gguf` (it is in requirements.txt)."
        ) from exc


def unsupported_architecture(model_id: str, exc: Exception) -> str | None:
    """The sentence for transformers' "architecture ... is not supported" refusal of a GGUF file, if it is one."""
    text = str(exc)
    marker = "GGUF model with architecture "
    if marker not in text:
        return None
    architecture = text.split(marker, 1)[1].split(" is not supported", 1)[0]
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        # The list also names the metadata sections every file has, which are no architectures.
        known = ", ".join(sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}))
    except ImportError:  # a transformers without that list: say less
        known = "see transformers' GGUF documentation"
    return (
        f"GGUF file '{model_id}' holds a '{architecture}' model, an architecture transformers cannot load from GGUF "
        f"(it can: {known}); use a model of a supported architecture, or its safetensors folder or hub id."
    )
