"""A model's layer count and hidden size from its config, without loading its weights.

Pages (Variants, Sweep, Playground's layer slider) and form validation need only these two
numbers; loading the weights for them took seconds on the first view of a page, and the
memory of a whole model in the web process. The config is a small JSON file in the model's
folder or the hub cache.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from engine.methods.base import ModelFacts
from engine.models import _cached_file, _check_model_reference, _locate, split_gguf

logger = logging.getLogger(__name__)

# Names the two numbers go by in transformers' configs (GPT-2 style configs use the second ones).
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers")
_HIDDEN = ("hidden_size", "n_embd", "d_model")


@functools.lru_cache(maxsize=64)
def config_facts(model_id: str) -> ModelFacts | None:
    """The facts from the model's config, or None when the config cannot be read or does not say
    (the caller then loads the model, which reports a missing model in one sentence)."""
    from transformers import AutoConfig  # here: importing transformers is slow

    try:
        _check_model_reference(model_id)
        folder, gguf_file = split_gguf(model_id)
        if gguf_file is not None:
            return _gguf_facts(model_id, folder, gguf_file)
        local_only = _locate(model_id) != "hub"
        config: Any = AutoConfig.from_pretrained(model_id, local_files_only=local_only)
    except Exception as exc:  # any failure: fall back to loading, which explains it in one sentence
        logger.debug("config of %s not readable (%s); the model will be loaded instead", model_id, exc)
        return None
    text = getattr(config, "text_config", None) or config  # multimodal configs nest the language model's
    layers = next((getattr(text, name) for name in _LAYERS if isinstance(getattr(text, name, None), int)), None)
    hidden = next((getattr(text, name) for name in _HIDDEN if isinstance(getattr(text, name, None), int)), None)
    if layers is None or hidden is None:
        return None
    return ModelFacts(model_id, layers, hidden)


def _gguf_facts(model_id: str, folder: str, gguf_file: str) -> ModelFacts | None:
    # The GGUF file's own metadata (memory-mapped, a fraction of a second), not transformers' config
    # conversion, which reads the whole tokenizer out of the file (seconds).
    from engine.memory_estimate import gguf_shape

    path = Path(model_id).expanduser() if _locate(folder, gguf_file) == "folder" else _cached_file(folder, gguf_file)
    if path is None:
        return None
    shape = gguf_shape(path)
    if shape.layers <= 0 or shape.hidden <= 0:
        return None
    return ModelFacts(model_id, shape.layers, shape.hidden)
