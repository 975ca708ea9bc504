"""Load causal language models once per process and describe them.

A :class:`LoadedModel` bundles the model, its tokenizer and the structural facts the
steering code needs (decoder blocks, hidden size, device, dtype). Loading failures
become one-sentence :class:`SteerLabError` messages naming the id and the fix.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import SteerLabError
from engine.layers import find_decoder_layers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")


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

    @property
    def n_layers(self) -> int:
        return len(self.layers)

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
    if device == "cuda" and not torch.cuda.is_available():
        raise SteerLabError("Device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu.")
    return torch.device(device)


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


_CACHE: dict[tuple[str, str, str], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def load_model(model_id: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load (or reuse) a causal LM by hub id or local folder."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    key = (model_id, str(torch_device), str(torch_dtype))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load_uncached(model_id, torch_device, torch_dtype)
        return _CACHE[key]


def wrap_model(model_id: str, model: Any, tokenizer: Any) -> LoadedModel:
    """Describe a model built in code (tests, benchmarks) the same way as a loaded one."""
    model.eval()
    expected = getattr(model.config, "num_hidden_layers", None)
    path, layers = find_decoder_layers(model, expected)
    param = next(model.parameters())
    return LoadedModel(model_id, model, tokenizer, layers, path, param.device, param.dtype)


def _load_uncached(model_id: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    # Imported here so that `python -m engine --help` stays fast.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_model_reference(model_id)
    folder, gguf_file = split_gguf(model_id)
    source = _locate(folder)
    local_only = source != "hub"  # never wait on the network for files already on disk
    extra: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        # A tokenizer saved beside a GGUF file (with its chat template) wins over the one inside the file.
        beside = gguf_file is not None and source == "folder" and (Path(folder) / "tokenizer_config.json").is_file()
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=local_only, **({} if beside else extra))
        model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=local_only, **extra)
    except (OSError, ValueError, KeyError) as exc:
        raise SteerLabError(_explain_load_failure(model_id, source, exc)) from exc
    model = model.to(device)
    return wrap_model(model_id, model, tokenizer)


def split_gguf(model_id: str) -> tuple[str, str | None]:
    """``(folder or hub id, GGUF file name)`` of a model reference; the name is None unless it ends in .gguf."""
    if not model_id.lower().endswith(".gguf"):
        return model_id, None
    path = Path(model_id)
    return str(path.parent), path.name


def _check_model_reference(model_id: str) -> None:
    # A hub id is "org/name"; anything else with slashes, or starting like a path, is a folder.
    path_like = model_id.startswith((".", "/", "~")) or model_id.count("/") > 1
    if path_like and not Path(model_id).expanduser().exists():
        raise SteerLabError(
            f"Model folder '{model_id}' does not exist; pass an existing folder or a Hugging Face hub id like 'org/name'."
        )


# The hub probe's limit: long enough for a slow network, short enough that an unreachable hub is
# reported in seconds instead of after huggingface_hub's retries (five, backing off, about a minute).
HUB_PROBE_TIMEOUT_S = 10.0


def _locate(model_id: str) -> str:
    """Where ``model_id`` loads from: "folder", "cache" (a hub id in the hub cache) or "hub".

    A hub id missing from the cache is looked up once on the hub, with a short timeout and no
    retries, so that an offline machine fails in seconds with the cache folder and the fix.
    """
    if Path(model_id).expanduser().exists():
        return "folder"
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        cached = isinstance(try_to_load_from_cache(model_id, "config.json"), str)
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
