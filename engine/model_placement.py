"""Where a model's weights go and in what form: one device, several GPUs, 4- or 8-bit.

- ``cpu`` and ``cuda`` put the whole model on that device;
- ``multi`` spreads the decoder blocks over every visible GPU with accelerate's
  ``device_map="auto"`` (inputs go to the first; the steering code moves each edit to its
  block's device, see :meth:`engine.models.LoadedModel.layer_device`);
- ``auto`` is ``cuda`` when a GPU is visible (``multi`` when there are several and the model
  does not fit the first one's free memory), else ``cpu``.

``quantize`` (``4bit``/``8bit``) loads the linear layers through bitsandbytes, which needs a
CUDA GPU and the ``bitsandbytes`` package. None of the CUDA paths run on the project's
CPU-only test machine; they are the plain transformers/accelerate calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.errors import SteerLabError

QUANTIZE = ("4bit", "8bit")


@dataclass(frozen=True)
class Placement:
    device: torch.device  # where inputs go (the first block's device when spread)
    spread: bool = False  # device_map="auto" over every visible GPU

    @property
    def gpus(self) -> tuple[int, ...]:
        if self.device.type != "cuda":
            return ()
        return tuple(range(torch.cuda.device_count())) if self.spread else (self.device.index or 0,)

    @property
    def label(self) -> str:
        return f"{torch.cuda.device_count()} GPUs" if self.spread else str(self.device)


def check_quantize(quantize: str | None, device: torch.device) -> None:
    if quantize is None:
        return
    if quantize not in QUANTIZE:
        raise SteerLabError(
            f"Quantize '{quantize}' is not one of {', '.join(QUANTIZE)}; pick one of those or leave it out."
        )
    if device.type != "cuda":
        raise SteerLabError(
            f"{quantize} loading (bitsandbytes) needs a CUDA GPU and this run is on {device}; "
            "leave out --quantize, or run on a machine with a GPU (--device cuda)."
        )
    try:
        import bitsandbytes  # noqa: F401  (only whether it imports)
    except ImportError as exc:
        raise SteerLabError(
            f"{quantize} loading needs the bitsandbytes package, which is not installed; "
            "run `pip install bitsandbytes`, or leave out --quantize."
        ) from exc


def loading_arguments(placement: Placement, dtype: torch.dtype, quantize: str | None) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments; empty for a model loaded whole and then moved (the CPU path)."""
    arguments: dict[str, Any] = {}
    if quantize is not None:
        from transformers import BitsAndBytesConfig

        arguments["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype)
            if quantize == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
    if placement.spread:
        arguments["device_map"] = "auto"
    elif quantize is not None:  # a bitsandbytes model cannot be moved after loading: place it while loading
        arguments["device_map"] = {"": placement.device.index or 0}
    return arguments


def moved_after_loading(placement: Placement, quantize: str | None) -> bool:
    return not placement.spread and quantize is None
