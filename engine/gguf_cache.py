"""GGUF files converted once to safetensors, so later loads skip the dequantisation.

transformers dequantises every tensor of a GGUF file on each load (about 15 s for the
135M-parameter SmolLM2 file on two cores; minutes for billions of parameters). The first
load saves the dequantised model (weights in the dtype it was loaded in, and its config) to
``<cache>/gguf/<file's SHA-256>-<dtype>-transformers-<version>/``; later loads of the same
file content read that folder instead, which gives the same weights bit for bit.

``<cache>`` is ``$STEERLAB_CACHE`` when set, else ``~/.cache/steerlab`` (outside any project:
copies are large and shared by every clone). A copy is written to a temporary folder beside
its final name and renamed into place, so a killed process or two processes converting at
once never leave a half-written copy under the final name. Only models whose copy is at most
``STEERLAB_GGUF_CACHE_MAX`` (default 4GiB; ``0`` turns the cache off) are copied: the copy
is several times the size of a quantised GGUF file.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from engine.memory_estimate import parse_size

logger = logging.getLogger(__name__)

CACHE_MAX_ENV = "STEERLAB_GGUF_CACHE_MAX"
DEFAULT_CACHE_MAX = 4 * 2**30
_COMPLETE = "steerlab-complete"  # written last inside the temporary folder, before the rename


def cache_root() -> Path:
    configured = os.environ.get("STEERLAB_CACHE", "").strip()
    return (Path(configured) if configured else Path.home() / ".cache" / "steerlab") / "gguf"


def cache_max() -> int:
    raw = os.environ.get(CACHE_MAX_ENV, "").strip()
    return parse_size(raw, CACHE_MAX_ENV) if raw else DEFAULT_CACHE_MAX


def converted_folder(sha256: str, dtype: torch.dtype) -> Path:
    import transformers

    name = str(dtype).removeprefix("torch.")
    return cache_root() / f"{sha256}-{name}-transformers-{transformers.__version__}"


def find_converted(sha256: str, dtype: torch.dtype) -> Path | None:
    if cache_max() <= 0:
        return None
    folder = converted_folder(sha256, dtype)
    return folder if (folder / _COMPLETE).is_file() else None


def load_converted(sha256: str, dtype: torch.dtype, arguments: dict[str, Any]) -> Any | None:
    """The model from its converted copy, or None (no copy, or an unreadable one: the GGUF file is read instead)."""
    folder = find_converted(sha256, dtype)
    if folder is None:
        return None
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True, **arguments)
    except Exception as exc:  # safetensors' own errors share no narrower base; the GGUF file is the fallback
        logger.warning("GGUF cache: %s is unreadable (%s); reading the GGUF file instead", folder, exc)
        return None


def save_converted(model: Any, sha256: str, dtype: torch.dtype) -> Path | None:
    """Save a just-dequantised model under its file's hash; never fails the load that made it."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    limit = cache_max()
    if limit <= 0 or size > limit:
        logger.info("GGUF cache: not keeping a %d-byte copy (limit %d, %s)", size, limit, CACHE_MAX_ENV)
        return None
    final = converted_folder(sha256, dtype)
    if (final / _COMPLETE).is_file():
        return final
    temporary = final.parent / f".{final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        _save(model, temporary)
        (temporary / _COMPLETE).write_text(sha256 + "\n")
        temporary.rename(final)  # atomic; fails if another process renamed its copy first
        logger.info("GGUF cache: saved %s", final)
        return final
    except (OSError, ValueError, RuntimeError) as exc:
        if (final / _COMPLETE).is_file():
            return final  # another process won the race with the same content
        logger.warning("GGUF cache: could not save %s (%s); the GGUF file will be dequantised next time", final, exc)
        return None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _save(model: Any, folder: Path) -> None:
    # transformers refuses save_pretrained on a model it loaded from GGUF (it counts as quantised),
    # though its weights are plain tensors by then: write the weights and the config without the
    # GGUF marker ourselves. save_model stores tied weights once; from_pretrained ties them again.
    from safetensors.torch import save_model

    folder.mkdir()
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
