"""Will the model fit? An estimate made before loading, and a refusal in one sentence if not.

Loading a model that does not fit ends in an out-of-memory kill (CPU) or a CUDA error
minutes later, after the weights were read; the estimate is read from the config (or
the GGUF file's tensor shapes) in a second or two:

- weights: parameters × bytes per parameter for the dtype (4-bit and 8-bit quantisation
  apply to the linear layers; embeddings stay in the dtype);
- loading: a GGUF file is dequantised to a float32 copy of the weights before they go into
  the model, so loading one needs that copy as well (not once it has a converted copy, see
  engine.gguf_cache);
- working memory for a batch: the KV cache and hidden activations of ``batch_size`` rows of
  ``context_tokens`` tokens, full-sequence float32 logits (perplexity reads every
  position), and a fixed allowance for the runtime.

It is compared with the memory available: the CPU's available memory (psutil), or the free
memory of the GPUs used (``torch.cuda.mem_get_info``). ``STEERLAB_MAX_MEMORY`` (``2GB``,
``512MiB``, bytes) caps what is considered available, as accelerate's ``max_memory`` does.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.errors import SteerLabError

logger = logging.getLogger(__name__)

MAX_MEMORY_ENV = "STEERLAB_MAX_MEMORY"
DEFAULT_CONTEXT_TOKENS = 512
RUNTIME_ALLOWANCE = 256 * 2**20  # torch's own buffers, the tokenizer, Python objects
QUANTIZED_BYTES = {"8bit": 1.0, "4bit": 0.5}

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model, read without loading its weights."""

    parameters: int
    linear_parameters: int  # those 4-/8-bit quantisation shrinks
    layers: int
    hidden: int
    intermediate: int
    kv_width: int  # key/value heads × head size
    vocab: int


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    weight_bytes: int
    loading_bytes: int
    working_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.loading_bytes + self.working_bytes


def estimate_memory(
    shape: ModelShape,
    dtype: torch.dtype,
    quantize: str | None = None,
    batch_size: int = 32,  # a run's default batch (service.run_options.RunOptions)
    context_tokens: int = DEFAULT_CONTEXT_TOKENS,
    dequantising: bool = False,
) -> MemoryEstimate:
    size = torch.tensor([], dtype=dtype).element_size()
    if quantize is None:
        weights = shape.parameters * size
    else:
        other = shape.parameters - shape.linear_parameters
        weights = int(shape.linear_parameters * QUANTIZED_BYTES[quantize]) + other * size
    loading = shape.parameters * 4 if dequantising else 0
    rows = batch_size * context_tokens
    kv_cache = 2 * shape.layers * rows * shape.kv_width * size
    activations = 2 * rows * (shape.hidden + shape.intermediate) * max(size, 4)
    logits = rows * shape.vocab * 4
    working = kv_cache + activations + logits + RUNTIME_ALLOWANCE
    return MemoryEstimate(shape.parameters, int(weights), loading, working)


def parse_size(text: str, name: str = MAX_MEMORY_ENV) -> int:
    """``2GB``, ``1.5 GiB``, ``512MB`` or a plain number of bytes (``name``: the variable it came from)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise SteerLabError(f"{name}='{text[:40]}' is not a size; write it like 2GB, 512MiB or a number of bytes.")
    return int(float(match.group(1)) * _UNITS[unit])


def available_memory(device: torch.device, gpus: Sequence[int] = ()) -> tuple[int, str]:
    """Bytes available where the model goes, and where that figure came from (for the message)."""
    cap = os.environ.get(MAX_MEMORY_ENV, "").strip()
    if device.type == "cuda":
        indices = list(gpus) or [device.index or 0]
        free = sum(torch.cuda.mem_get_info(i)[0] for i in indices)
        where = f"free on GPU{'s' if len(indices) > 1 else ''} {', '.join(map(str, indices))}"
    else:
        import psutil

        free = int(psutil.virtual_memory().available)
        where = "available to the CPU"
    if cap:
        capped = parse_size(cap, MAX_MEMORY_ENV)
        if capped < free:
            return capped, f"allowed by {MAX_MEMORY_ENV}"
    return free, where


def gib(value: int) -> str:
    return f"{value / 2**30:.2f} GiB"


def check_fits(model_id: str, estimate: MemoryEstimate, available: int, where: str, settings: str) -> None:
    """Refuse, naming both figures and the fixes, when the estimate exceeds what is available."""
    if estimate.total_bytes <= available:
        return
    raise SteerLabError(
        f"Model '{model_id}' needs about {gib(estimate.total_bytes)} ({settings}: weights {gib(estimate.weight_bytes)}"
        + (f", loading {gib(estimate.loading_bytes)}" if estimate.loading_bytes else "")
        + f", a batch {gib(estimate.working_bytes)}) but only {gib(available)} is {where}; "
        "use a smaller dtype (--dtype bfloat16 on a GPU), --quantize 4bit or 8bit on a GPU, a smaller --batch-size, "
        f"another device, or raise {MAX_MEMORY_ENV} if the figure is too strict."
    )


def gguf_shape(path: Path) -> ModelShape:
    """The shape of a GGUF file's model, from its header's metadata and tensor shapes (milliseconds)."""
    from engine.gguf_header import read_gguf_header

    header = read_gguf_header(path)
    architecture = str(header.metadata.get("general.architecture", ""))

    def number(name: str, default: int = 0) -> int:
        value = header.metadata.get(f"{architecture}.{name}")
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

    parameters = linear = vocab = 0
    for name, dims in header.tensors:
        count = math.prod(dims)
        parameters += count
        if name.startswith("blk.") and name.endswith(".weight") and len(dims) == 2:
            linear += count
        if name == "token_embd.weight":
            vocab = max(dims)
    hidden = number("embedding_length")
    heads = number("attention.head_count", 1) or 1
    kv_heads = number("attention.head_count_kv", heads)
    return ModelShape(
        parameters=parameters,
        linear_parameters=linear,
        layers=number("block_count"),
        hidden=hidden,
        intermediate=number("feed_forward_length", 4 * hidden),
        kv_width=kv_heads * (hidden // heads),
        vocab=vocab,
    )


def config_shape(config: Any) -> ModelShape:
    """The shape of a model from its transformers config: parameters counted on an empty (meta) copy."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    parameters = sum(p.numel() for p in model.parameters())  # tied weights are one parameter
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    text = getattr(config, "text_config", None) or config
    hidden = int(_first(text, ("hidden_size", "n_embd", "d_model"), 0))
    heads = int(_first(text, ("num_attention_heads", "n_head"), 1)) or 1
    kv_heads = int(_first(text, ("num_key_value_heads",), heads))
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    return ModelShape(
        parameters=parameters,
        linear_parameters=min(linear, parameters),
        layers=int(_first(text, ("num_hidden_layers", "n_layer", "num_layers"), 0)),
        hidden=hidden,
        intermediate=int(_first(text, ("intermediate_size", "n_inner", "ffn_dim"), 4 * hidden) or 4 * hidden),
        kv_width=kv_heads * head_dim,
        vocab=int(_first(text, ("vocab_size",), 0)),
    )


def _first(config: Any, names: Sequence[str], default: int) -> Any:
    return next((getattr(config, n) for n in names if isinstance(getattr(config, n, None), int)), default)
