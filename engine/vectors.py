"""The steering-vector value type and its safetensors file format.

A :class:`SteeringVector` holds one direction per decoder layer it was extracted at,
plus where it came from. Files are plain safetensors: one tensor ``directions`` of shape
``[n, hidden]`` and string metadata (model id, hidden size, layers, method, read
position, pairs' hash, extraction time), so other tools can read them too.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from engine import limits
from engine.errors import SteerLabError
from engine.fields import middle, printable, short

FORMAT = "steerlab-vector/1"

# How a vector's length was made, recorded as ``extra["norm_convention"]``: the coefficient
# a vector needs differs by orders of magnitude between them (a unit-norm direction needs
# about the hidden states' own norm; a mean difference is already in their units).
MEAN_DIFFERENCE = "mean_difference"  # SteerLab's extraction (mean_diff, pca, single_pair): activation units
UNIT_NORM = "unit_norm"  # each layer's direction has length 1 (repeng's PCA components)
BAKED = "baked"  # a coefficient is already multiplied in (an exported control vector): use it at 1
UNKNOWN = "unknown"
NORM_CONVENTIONS = {
    MEAN_DIFFERENCE: "mean difference in activation units (SteerLab's extraction)",
    UNIT_NORM: "unit-norm direction per layer (repeng-style PCA)",
    BAKED: "coefficient baked in (use it at coefficient 1)",
    UNKNOWN: "unknown scale",
}
# SteerLab's PCA scales its unit component by the mean difference's projection, so every
# extraction method gives activation units.
_EXTRACTED = ("mean_diff", "pca", "single_pair")
# Per-layer norms within this of 1 read as unit-norm directions.
UNIT_NORM_TOLERANCE = 1e-3
# Largest magnitude of one number in a direction: far beyond any hidden state, far below
# where a steering coefficient (at most engine.fields.MAX_COEFFICIENT) overflows float32.
MAX_ABS_VALUE = 1e6


@dataclass(frozen=True)
class SteeringVector:
    """Directions in a model's residual stream, one row per layer in ``layers``."""

    name: str
    directions: torch.Tensor  # float32, [len(layers), hidden], on the CPU
    layers: tuple[int, ...]
    model_id: str = ""
    method: str = ""
    read: str = ""
    pairs_hash: str = ""
    extraction_seconds: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.directions.ndim != 2 or self.directions.shape[0] != len(self.layers):
            raise ValueError("directions must be [len(layers), hidden]")

    @property
    def hidden_size(self) -> int:
        return int(self.directions.shape[1])

    def for_layer(self, layer: int) -> torch.Tensor:
        if layer not in self.layers:
            covered = ", ".join(str(x) for x in self.layers)
            raise SteerLabError(
                f"Vector '{self.name}' has no direction for layer {layer} (it covers layers {covered}); "
                "pick one of those layers or extract the vector again."
            )
        return self.directions[self.layers.index(layer)]

    @property
    def parameter_count(self) -> int:
        return int(self.directions.numel())

    @property
    def norm_convention(self) -> str:
        """How this vector's length was made (see NORM_CONVENTIONS); inferred for vectors saved before it was recorded."""
        recorded = self.extra.get("norm_convention", "")
        if recorded in NORM_CONVENTIONS:
            return recorded
        if self.method in _EXTRACTED:
            return MEAN_DIFFERENCE
        return UNIT_NORM if looks_unit_norm(self.directions) else UNKNOWN

    def layer_norms(self) -> dict[int, float]:
        """Each layer's direction length, the figure a coefficient is weighed against."""
        return {
            layer: float(norm) for layer, norm in zip(self.layers, self.directions.norm(dim=1).tolist(), strict=True)
        }

    def to_bytes(self) -> bytes:
        return save({"directions": self.directions.contiguous()}, metadata=self.metadata())

    def metadata(self) -> dict[str, str]:
        """The file's string metadata: provenance, and ``extra.*`` (the norm convention among them)."""
        return {
            "format": FORMAT,
            "name": self.name,
            "model_id": self.model_id,
            "hidden_size": str(self.hidden_size),
            "layers": json.dumps(list(self.layers)),
            "method": self.method,
            "read": self.read,
            "pairs_hash": self.pairs_hash,
            "extraction_seconds": repr(self.extraction_seconds),
            **{f"extra.{k}": v for k, v in self.extra.items()},
        }

    @classmethod
    def from_bytes(cls, data: bytes, source: str, name: str | None = None) -> SteeringVector:
        limits.check(limits.MAX_FILE_BYTES, len(data), source)
        try:
            tensors = load(data)
            metadata = _read_metadata(data)
        except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
            raise SteerLabError(
                f"{source} is not a readable safetensors vector file ({printable(short(str(exc), 160))}); "
                "save it again with SteerLab."
            ) from exc
        directions = tensors.get("directions")
        if directions is None:
            if len(tensors) != 1:
                raise SteerLabError(
                    f"{source} holds no tensor named 'directions'; save it with SteerLab or hold exactly one tensor."
                )
            directions = next(iter(tensors.values()))
        if directions.ndim == 1:
            directions = directions[None, :]
        if directions.ndim != 2 or directions.shape[0] == 0 or directions.shape[1] == 0:
            raise SteerLabError(
                f"{source} holds a tensor of shape {list(directions.shape)}, not [layers, hidden size]; "
                "save one direction per layer with SteerLab."
            )
        if not directions.dtype.is_floating_point:
            raise SteerLabError(f"{source} holds {directions.dtype} numbers, not floating point; save it as float32.")
        directions = directions.to(torch.float32)
        if not bool(torch.isfinite(directions).all()):
            raise SteerLabError(f"{source} holds NaN or infinite numbers; extract or save the vector again.")
        largest = float(directions.abs().max())
        if largest > MAX_ABS_VALUE:
            raise SteerLabError(
                f"{source} holds a number of magnitude {largest:.3g}, above the {MAX_ABS_VALUE:g} a direction "
                "can sensibly hold; extract or save the vector again."
            )
        layers = _metadata_layers(metadata.get("layers"), directions.shape[0], source)
        seconds_text = metadata.get("extraction_seconds", "0") or "0"
        try:
            seconds = float(seconds_text)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds < 0:
            raise SteerLabError(
                f"{source} has extraction_seconds {seconds_text[:40]!r} in its metadata, not a duration; save it again."
            )
        return cls(
            name=name or metadata.get("name", "") or Path(source).stem,
            directions=directions,
            layers=layers,
            model_id=metadata.get("model_id", ""),
            method=metadata.get("method", ""),
            read=metadata.get("read", ""),
            pairs_hash=metadata.get("pairs_hash", ""),
            extraction_seconds=seconds,
            extra={k[len("extra.") :]: v for k, v in metadata.items() if k.startswith("extra.")},
        )

    def check_fits(self, hidden_size: int, model_id: str, source: str) -> None:
        if self.hidden_size != hidden_size:
            raise SteerLabError(
                f"{source} holds a vector of hidden size {self.hidden_size} (from model '{self.model_id or 'unknown'}'), "
                f"but model '{model_id}' has hidden size {hidden_size}; extract the vector on this model."
            )


def looks_unit_norm(directions: torch.Tensor) -> bool:
    """Whether every row has length 1 (within UNIT_NORM_TOLERANCE)."""
    norms = directions.norm(dim=1)
    return bool(((norms - 1.0).abs() <= UNIT_NORM_TOLERANCE).all())


def _read_metadata(data: bytes) -> dict[str, str]:
    # safetensors keeps metadata in the JSON header: 8 bytes of length, then the header.
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def save_vector(vector: SteeringVector, path: str | Path) -> None:
    Path(path).write_bytes(vector.to_bytes())


def read_vector_file(path: str | Path) -> tuple[str, bytes]:
    """How messages name a vector file, and its bytes: checked to exist, be readable and within the size limit."""
    file = Path(path)
    source = f"Vector file '{middle(printable(str(file)))}'"
    try:
        if not file.is_file():
            raise SteerLabError(f"{source} does not exist; check the path.")
        limits.check(limits.MAX_FILE_BYTES, file.stat().st_size, source)
        return source, file.read_bytes()
    except OSError as exc:
        raise SteerLabError(f"{source} cannot be read ({exc.strerror}); check the path and its permissions.") from exc


def load_vector(path: str | Path, name: str | None = None) -> SteeringVector:
    source, data = read_vector_file(path)
    return SteeringVector.from_bytes(data, source=source, name=name)


def hash_pairs(pairs: Sequence[tuple[str, str]]) -> str:
    """A stable fingerprint of contrastive pairs, stored with every extracted vector."""
    digest = hashlib.sha256(json.dumps([list(p) for p in pairs], ensure_ascii=False).encode())
    return digest.hexdigest()[:16]


def _metadata_layers(text: str | None, count: int, source: str) -> tuple[int, ...]:
    """The ``layers`` metadata: a JSON list of distinct non-negative layer numbers, one per direction."""
    if not text:
        return tuple(range(count))
    try:
        layers = json.loads(text)
    except json.JSONDecodeError:
        layers = None
    if (
        not isinstance(layers, list)
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers)
        or len(set(layers)) != len(layers)
    ):
        raise SteerLabError(
            f"{source} has layers {text[:40]!r} in its metadata, not a list of distinct layer numbers; save it again."
        )
    if len(layers) != count:
        raise SteerLabError(f"{source} lists {len(layers)} layers for {count} directions; save it again.")
    return tuple(layers)
