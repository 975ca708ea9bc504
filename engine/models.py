"""Load causal language models once per process and describe them.

A :class:`LoadedModel` bundles the model, its tokenizer and the structural facts the
steering code needs (decoder blocks, hidden size, device, dtype). Loading failures
become one-sentence :class:`SteerLabError` messages naming the id and the fix.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import gguf_cache, memory_estimate
from engine.errors import SteerLabError
from engine.layers import find_decoder_layers
from engine.model_cache import ModelCache
from engine.model_placement import Placement, check_quantize, loading_arguments, moved_after_loading
from engine.model_reference import (
    check_gguf_file,
    is_gguf,
    looks_like_hub_gguf,
    unsupported_architecture,
)
from engine.model_reference import split_gguf as split_gguf  # re-exported: callers import it from here
from engine.model_source import describe_file, describe_folder, describe_hub

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda", "multi")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for steering: weights, tokenizer and where its blocks are."""

    model_id: str
    model: Any  # a transformers PreTrainedModel; typed loosely because its stubs are partial
    tokenizer: Any
    layers: nn.ModuleList
    layers_path: str
    device: torch.device
    dtype: torch.dtype
    # Hooks are attached to the shared model object, so one forward-pass job at a time:
    # a dashboard preview must never run through a background run's steering hooks.
    lock: threading.RLock = field(default_factory=threading.RLock, compare=False, repr=False)
    # Which exact weights were loaded (engine.model_source): a GGUF file's SHA-256, a hub revision.
    source: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def layer_device(self, layer: int) -> torch.device:
        """The device of decoder block ``layer``'s parameters (blocks differ when a model is spread over GPUs)."""
        block = self.layers[layer]
        param = next(block.parameters(), None)
        return param.device if param is not None else self.device

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    @property
    def eos_token_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        config_eos = getattr(self.model.generation_config, "eos_token_id", None)
        for value in (self.tokenizer.eos_token_id, config_eos):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(int(v) for v in value)
        return frozenset(ids)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise SteerLabError(f"Device '{device}' is not one of {', '.join(DEVICES)}; pick one of those.")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device in ("cuda", "multi") and not torch.cuda.is_available():
        raise SteerLabError(f"Device '{device}' was asked for but torch sees no CUDA GPU; use --device cpu.")
    return torch.device("cuda" if device == "multi" else device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise SteerLabError(f"Dtype '{dtype}' is not one of auto, {', '.join(DTYPES)}; pick one of those.")
    if device.type == "cpu" and dtype != "float32":
        raise SteerLabError(f"Dtype '{dtype}' is for GPUs only; on the CPU use float32 (the default).")
    return DTYPES[dtype]


_CACHE: ModelCache[LoadedModel] = ModelCache()


def load_model(
    model_id: str,
    device: str = "auto",
    dtype: str = "auto",
    *,
    quantize: str | None = None,
    batch_size: int = 32,  # service.run_options.RunOptions.batch_size: what a run uses by default
) -> LoadedModel:
    """Load (or reuse) a causal LM by hub id, local folder or GGUF file (see engine.model_reference).

    ``quantize`` is ``4bit``/``8bit`` (bitsandbytes, CUDA only); ``batch_size`` sizes the memory
    estimate made before loading (a model that will not fit is refused in one sentence).
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    check_quantize(quantize, torch_device)
    key = (model_id, device if device == "multi" else str(torch_device), str(torch_dtype), quantize)
    return _CACHE.get(key, lambda: _load_uncached(model_id, device, torch_device, torch_dtype, quantize, batch_size))


def cached_models() -> list[str]:
    """The model ids the cache holds, least recently used first."""
    return [str(key[0]) for key in _CACHE.loaded() if isinstance(key, tuple)]


def wrap_model(model_id: str, model: Any, tokenizer: Any, source: Mapping[str, Any] | None = None) -> LoadedModel:
    """Describe a model built in code (tests, benchmarks) the same way as a loaded one."""
    model.eval()
    expected = getattr(model.config, "num_hidden_layers", None)
    path, layers = find_decoder_layers(model, expected)
    # Inputs go where the embeddings are (the first GPU of a model spread over several).
    embeddings = model.get_input_embeddings()
    param = embeddings.weight if embeddings is not None else next(model.parameters())
    return LoadedModel(model_id, model, tokenizer, layers, path, param.device, param.dtype, source=dict(source or {}))


def _load_uncached(
    model_id: str, device: str, torch_device: torch.device, dtype: torch.dtype, quantize: str | None, batch_size: int
) -> LoadedModel:
    # Imported here so that `python -m engine --help` stays fast.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_model_reference(model_id)
    folder, gguf_file = split_gguf(model_id)
    try:
        source = _locate(folder, gguf_file or "config.json")
    except SteerLabError as exc:
        if gguf_file is None:
            raise
        # org/repo/file.gguf that is not on disk: say both places were looked in.
        raise SteerLabError(
            f"GGUF file '{model_id}' is not on disk (relative to the working directory) and not in the "
            f"Hugging Face cache at {_cache_folder()} as a file of the repository '{folder}'; check the path, "
            f"or download it once with `hf download {folder} {gguf_file}` where there is network."
        ) from exc
    if gguf_file is not None and source != "folder":
        _check_cached_gguf(model_id, folder, gguf_file)
    local_only = source != "hub"  # never wait on the network for files already on disk
    extra: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    described = _describe_source(model_id, folder, gguf_file, source)
    sha256 = described.get("sha256")
    # A GGUF file converted on an earlier load (engine.gguf_cache) loads from that copy instead,
    # without holding a dequantised copy of the weights while loading.
    dequantising = gguf_file is not None and not (sha256 and gguf_cache.find_converted(sha256, dtype))
    placement = _placement(model_id, device, torch_device, dtype, quantize, batch_size, source, dequantising)
    arguments = loading_arguments(placement, dtype, quantize)
    model: Any = gguf_cache.load_converted(sha256, dtype, arguments) if sha256 else None
    converted = model is not None
    try:
        # A tokenizer saved beside a GGUF file (with its chat template) wins over the one inside the file.
        beside = gguf_file is not None and source == "folder" and (Path(folder) / "tokenizer_config.json").is_file()
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=local_only, **({} if beside else extra))
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype, local_files_only=local_only, **extra, **arguments
            )
    except (OSError, ValueError, KeyError) as exc:
        raise SteerLabError(
            unsupported_architecture(model_id, exc) or _explain_load_failure(model_id, source, exc)
        ) from exc
    if sha256 and not converted and not arguments:  # plain weights only, not 4-bit ones
        gguf_cache.save_converted(model, sha256, dtype)
    if moved_after_loading(placement, quantize):
        model = model.to(placement.device)
    logger.info(
        "loaded %s on %s (%s%s%s)",
        model_id,
        placement.label,
        dtype,
        f", {quantize}" if quantize else "",
        ", from the converted GGUF copy" if converted else "",
    )
    return wrap_model(model_id, model, tokenizer, described)


def _placement(
    model_id: str,
    device: str,
    torch_device: torch.device,
    dtype: torch.dtype,
    quantize: str | None,
    batch_size: int,
    source: str,
    dequantising: bool,
) -> Placement:
    """Where the model goes, after checking that it fits there (a refusal names both figures)."""
    placement = Placement(torch_device, spread=device == "multi")
    estimate = _estimate(model_id, dtype, quantize, batch_size, source, dequantising)
    if estimate is None:
        return placement
    settings = f"{str(dtype).removeprefix('torch.')}{', ' + quantize if quantize else ''}, batch of {batch_size}"
    available, where = memory_estimate.available_memory(placement.device, placement.gpus)
    if device == "auto" and torch.cuda.device_count() > 1 and estimate.total_bytes > available:
        # One GPU is too small: spread the blocks over all of them.
        placement = Placement(torch_device, spread=True)
        available, where = memory_estimate.available_memory(placement.device, placement.gpus)
    memory_estimate.check_fits(model_id, estimate, available, f"{where} ({placement.label})", settings)
    return placement


def _estimate(
    model_id: str, dtype: torch.dtype, quantize: str | None, batch_size: int, source: str, dequantising: bool
) -> memory_estimate.MemoryEstimate | None:
    folder, gguf_file = split_gguf(model_id)
    try:
        if gguf_file is not None:
            path = Path(model_id).expanduser() if source == "folder" else _cached_file(folder, gguf_file)
            if path is None:
                return None
            shape = memory_estimate.gguf_shape(path)
        else:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(folder, local_files_only=source != "hub")
            shape = memory_estimate.config_shape(config)
    except Exception as exc:  # an estimate is advice: never refuse a model because it could not be made
        logger.warning("no memory estimate for %s (%s: %s); loading it anyway", model_id, type(exc).__name__, exc)
        return None
    return memory_estimate.estimate_memory(shape, dtype, quantize, batch_size, dequantising=dequantising)


def _cached_file(repo_id: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename)
    return Path(cached) if isinstance(cached, str) else None


def _check_cached_gguf(model_id: str, repo_id: str, filename: str) -> None:
    path = _cached_file(repo_id, filename)
    if path is not None:
        check_gguf_file(model_id, path)


def _describe_source(model_id: str, folder: str, gguf_file: str | None, source: str) -> dict[str, Any]:
    if source == "folder":
        return describe_file(Path(model_id).expanduser()) if gguf_file else describe_folder(Path(folder).expanduser())
    return describe_hub(folder, gguf_file or "config.json")


def _check_model_reference(model_id: str) -> None:
    if is_gguf(model_id):
        if not looks_like_hub_gguf(model_id):  # org/repo/file.gguf is looked up in the hub cache instead
            check_gguf_file(model_id, Path(model_id).expanduser())
        return
    # A hub id is "org/name"; anything else with slashes, or starting like a path, is a folder.
    path_like = model_id.startswith((".", "/", "~")) or model_id.count("/") > 1
    if path_like and not Path(model_id).expanduser().exists():
        raise SteerLabError(
            f"Model folder '{model_id}' does not exist; pass an existing folder or a Hugging Face hub id like 'org/name'."
        )


# The hub probe's limit: long enough for a slow network, short enough that an unreachable hub is
# reported in seconds instead of after huggingface_hub's retries (five, backing off, about a minute).
HUB_PROBE_TIMEOUT_S = 10.0


def _locate(model_id: str, filename: str = "config.json") -> str:
    """Where ``model_id`` loads from: "folder", "cache" (a hub id in the hub cache) or "hub".

    ``filename`` is the file whose presence in the cache counts (a hub repository's GGUF file).

    A hub id missing from the cache is looked up once on the hub, with a short timeout and no
    retries, so that an offline machine fails in seconds with the cache folder and the fix.
    """
    if Path(model_id).expanduser().exists():
        return "folder"
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        cached = isinstance(try_to_load_from_cache(model_id, filename), str)
    except ValueError:  # not a valid hub id: transformers says so when loading
        return "hub"
    if cached:
        return "cache"
    if constants.is_offline_mode():
        raise SteerLabError(_not_cached(model_id, "downloads are off (HF_HUB_OFFLINE=1)"))
    try:
        model_info(model_id, timeout=HUB_PROBE_TIMEOUT_S)
    except RepositoryNotFoundError as exc:
        raise SteerLabError(
            f"Model '{model_id}' is not in the Hugging Face cache at {_cache_folder()} and the hub has no such public "
            "model; check the hub id (log in with `hf auth login` for a private or gated one), or pass a local folder."
        ) from exc
    except HfHubHTTPError as exc:
        raise SteerLabError(_not_cached(model_id, f"the hub answered with an error ({_first_line(exc)})")) from exc
    except Exception as exc:  # httpx's connection, proxy, TLS and timeout errors share no narrower base
        raise SteerLabError(
            _not_cached(model_id, f"the hub could not be reached ({type(exc).__name__}: {_first_line(exc)})")
        ) from exc
    return "hub"


def _cache_folder() -> str:
    """The hub cache folder huggingface_hub searches, and where that setting came from."""
    from huggingface_hub import constants

    # The same precedence as huggingface_hub.constants, which read these when it was imported.
    source = next(
        (f"from {name}" for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME") if os.environ.get(name)),
        "the default, as HF_HUB_CACHE is not set",
    )
    return f"{constants.HF_HUB_CACHE} ({source})"


def _not_cached(model_id: str, reason: str) -> str:
    folder = "models--" + model_id.replace("/", "--")
    return (
        f"Model '{model_id}' is not in the Hugging Face cache at {_cache_folder()} and {reason}; "
        f"set HF_HUB_CACHE=<the folder holding {folder}> and HF_HUB_OFFLINE=1, "
        f"download it once with `hf download {model_id}` where there is network, or pass a local model folder."
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _explain_load_failure(model_id: str, source: str, exc: Exception) -> str:
    if "Unrecognized configuration class" in str(exc):
        return (
            f"Model '{model_id}' is not a causal language model that transformers' AutoModelForCausalLM can load; "
            "pick a text-generation model."
        )
    if source == "folder":
        return (
            f"Folder '{model_id}' does not hold a loadable model ({_first_line(exc)}); "
            "point to a folder with config.json and weights."
        )
    if source == "cache":
        return (
            f"Model '{model_id}' is only partly in the Hugging Face cache at {_cache_folder()} ({_first_line(exc)}); "
            f"download it again with `hf download {model_id}` where there is network, "
            "or set HF_HUB_CACHE to a folder holding all of its files."
        )
    return (
        f"Model '{model_id}' could not be loaded ({_first_line(exc)}); "
        "check the hub id, or set HF_HUB_CACHE to a folder holding the model and HF_HUB_OFFLINE=1."
    )
