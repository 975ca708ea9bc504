"""Steering vectors in the formats other tools read and write.

Out: a steering variant's vectors, with its coefficients multiplied in, as

- a llama.cpp control-vector GGUF (``--control-vector file.gguf`` reproduces the variant at
  scale 1), the format repeng's ``ControlVector.export_gguf`` writes too;
- plain safetensors: one tensor per layer (keys are layer numbers, what steering-vectors'
  ``layer_activations`` holds) plus SteerLab's ``directions`` tensor and metadata.

In: a llama.cpp / repeng control-vector GGUF, a steering-vectors vector saved with
``torch.save(vector.layer_activations)`` (read with ``weights_only=True``: nothing in the
file is executed), a safetensors file of one tensor per layer, or SteerLab's own file.

Layer numbers. SteerLab's layer ``L`` is the 0-based decoder block whose *output* an edit
changes. llama.cpp's ``direction.N`` is the same: common/common.cpp
(``common_control_vector_load_one``) stores ``direction.N`` at row ``N - 1`` of its buffer
and refuses ``N == 0``; src/llama-adapter.cpp (``llama_adapter_cvec::apply``) copies row
``il - 1`` into the tensor of layer ``il`` for ``il`` in ``[1, n_layer)`` ("there's never a
tensor for layer 0"), and every model graph calls ``cvec.apply_to(ctx0, cur, il)`` on block
``il``'s output (``l_out``). So ``direction.N`` = SteerLab layer ``N``, and SteerLab's layer 0
cannot be expressed. repeng keys its directions by the block whose output its
``ControlModule`` wraps (negative ids normalised with ``n_layers + i``; it reads them at
``hidden_states[layer + 1]``, the same block's output), and steering-vectors hooks the output
of ``model.layers[n]``: both are SteerLab's numbering, unchanged.

Checked against llama.cpp itself (llama-cpp-python 0.3.36 built from source, SmolLM2-135M
Q4_1, ``llama_set_adapter_cvec`` with the buffer the loader builds): the logit shift of a file
holding ``direction.10`` correlates 0.996 with SteerLab's shift at layer 10, and 0.67 and 0.72
at layers 9 and 11 (``direction.1``: 0.990 at layer 1, 0.80 and 0.92 at 0 and 2).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from engine import limits
from engine.errors import SteerLabError
from engine.fields import printable, short
from engine.spec import VariantSpec
from engine.vectors import (
    BAKED,
    MAX_ABS_VALUE,
    MEAN_DIFFERENCE,
    NORM_CONVENTIONS,
    UNIT_NORM,
    UNKNOWN,
    SteeringVector,
    looks_unit_norm,
    read_vector_file,
)

GGUF_MAGIC = b"GGUF"
CONTROL_VECTOR_ARCH = "controlvector"
# Methods whose edit is ``h + coefficient * v`` (add) or that move ``h`` by it then rescale
# (add_norm); every other method edits in a way no fixed vector expresses.
_ADDITIVE = ("add", "add_norm")
# A unit-norm vector whose push is under this share of the hidden state's norm barely
# moves the model: the usual sign that a coefficient meant for mean differences was used.
SMALL_PUSH = 0.01
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"  # a bare pickle (protocol 2 and later)
_LAYER_KEY = re.compile(r"^(?:[A-Za-z_.]*\.)?(-?\d+)$")


@dataclass(frozen=True)
class VariantDeltas:
    """What a steering variant adds at each layer, its coefficients multiplied in."""

    experiment: str
    variant: str
    method: str  # add or add_norm
    scope: str
    layers: tuple[int, ...]
    deltas: torch.Tensor  # float32 [len(layers), hidden]
    edits: tuple[dict[str, Any], ...]  # each intervention's settings, as stored
    model_id: str = ""
    conventions: dict[str, str] = field(default_factory=dict)  # vector name -> its norm convention

    @property
    def coefficient(self) -> float | None:
        """The coefficient when every edit shares one (None when they differ)."""
        found = {float(e["coefficient"]) for e in self.edits}
        return found.pop() if len(found) == 1 else None

    def as_vector(self, name: str | None = None) -> SteeringVector:
        """The deltas as a SteerLab vector: used with coefficient 1 at its layers, it steers like the variant."""
        extra = {
            "norm_convention": BAKED,
            "source_format": "steerlab-export",
            "experiment": self.experiment,
            "variant": self.variant,
            "variant_method": self.method,
            "scope": self.scope,
            "edits": json.dumps(list(self.edits)),
            "vector_conventions": json.dumps(self.conventions, sort_keys=True),
        }
        if self.coefficient is not None:
            extra["coefficient"] = repr(self.coefficient)
        return SteeringVector(
            name=name or self.variant,
            directions=self.deltas.clone(),
            layers=self.layers,
            model_id=self.model_id,
            method="export",
            extra=extra,
        )


def variant_deltas(
    experiment: str, variant: VariantSpec, vectors: Mapping[str, SteeringVector], model_id: str = ""
) -> VariantDeltas:
    """Sum a steering variant's additions per layer, refusing (one sentence) what is not additive."""
    where = f"Variant '{variant.name}' of experiment '{experiment}'"
    if not variant.interventions:
        raise SteerLabError(
            f"{where} is a {variant.kind} variant with no steering edits, so it has no vectors to export; "
            "pick a steering variant."
        )
    methods = {i.name for i in variant.interventions}
    other = sorted(methods - set(_ADDITIVE))
    if other:
        raise SteerLabError(
            f"{where} uses the {other[0]} method, which changes hidden states in a way one added vector per layer "
            "cannot express; only variants of vector addition (add, add_norm) can be exported."
        )
    if len(methods) > 1:
        raise SteerLabError(
            f"{where} mixes add and add_norm edits, which no single vector file reproduces; export a variant of one method."
        )
    scopes = {str(getattr(i, "scope", "all")) for i in variant.interventions}
    if len(scopes) > 1:
        raise SteerLabError(
            f"{where} steers different token scopes ({', '.join(sorted(scopes))}) in one variant, which one vector "
            "file cannot record; export a variant with one scope."
        )
    method, scope = methods.pop(), scopes.pop()
    by_layer: dict[int, torch.Tensor] = {}
    for intervention in variant.interventions:
        vector_name = intervention.vector_names()[0]
        if vector_name not in vectors:
            raise SteerLabError(
                f"{where} uses vector '{vector_name}', which has not been extracted yet; run the experiment first."
            )
        vector = vectors[vector_name]
        coefficient = float(intervention.to_dict()["coefficient"])
        for layer in intervention.layers:
            delta = coefficient * vector.for_layer(layer)  # the same float32 product scaled_deltas makes
            if layer in by_layer:
                if method == "add_norm":
                    raise SteerLabError(
                        f"{where} applies two norm-preserving edits at layer {layer}, which one summed vector does "
                        "not reproduce; export a variant with one edit per layer."
                    )
                by_layer[layer] = by_layer[layer] + delta
            else:
                by_layer[layer] = delta
    layers = tuple(sorted(by_layer))
    deltas = torch.stack([by_layer[layer] for layer in layers]).to(torch.float32).contiguous()
    conventions = {name: vectors[name].norm_convention for name in variant.vector_names() if name in vectors}
    return VariantDeltas(
        experiment,
        variant.name,
        method,
        scope,
        layers,
        deltas,
        tuple(i.to_dict() for i in variant.interventions),
        model_id,
        conventions,
    )


def check_llama_cpp(deltas: VariantDeltas, has_prompt: bool = False) -> None:
    """Refuse (one sentence) a variant llama.cpp's control vectors cannot reproduce exactly."""
    where = f"Variant '{deltas.variant}' of experiment '{deltas.experiment}'"
    if deltas.method != "add":
        raise SteerLabError(
            f"{where} uses norm-preserving addition, but llama.cpp only adds its control vector without rescaling; "
            "export it as safetensors, or export a variant of plain addition (add)."
        )
    if deltas.scope != "all":
        raise SteerLabError(
            f"{where} steers only the {deltas.scope} tokens, but llama.cpp adds a control vector to every token; "
            "export it as safetensors, or export a variant with scope all."
        )
    if 0 in deltas.layers:
        raise SteerLabError(
            f"{where} steers layer 0, but llama.cpp never adds a control vector there (its direction.N goes to the "
            "output of block N, from 1 up); export it as safetensors, or steer from layer 1 up."
        )
    if has_prompt:
        raise SteerLabError(
            f"{where} also changes the prompt (a prefix or system prompt), which a control vector cannot carry; "
            "export it as safetensors, or export a variant that only steers."
        )


def write_control_vector(
    deltas: VariantDeltas, path: str | Path, model_hint: str, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``direction.N`` per steered layer as llama.cpp reads it (see the module docstring); atomic."""
    import gguf  # here: only the GGUF export and import need it

    check_llama_cpp(deltas)
    target = Path(path)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(handle)
    try:
        writer = gguf.GGUFWriter(temporary, CONTROL_VECTOR_ARCH)
        writer.add_string(f"{CONTROL_VECTOR_ARCH}.model_hint", model_hint)
        # repeng writes the number of direction tensors here; llama.cpp's loader does not read it.
        writer.add_uint32(f"{CONTROL_VECTOR_ARCH}.layer_count", len(deltas.layers))
        vector = deltas.as_vector()
        for key, value in {**vector.extra, "model_id": deltas.model_id, **(metadata or {})}.items():
            writer.add_string(f"steerlab.{key}", value)
        if deltas.coefficient is not None:
            writer.add_float32("steerlab.coefficient_value", deltas.coefficient)
        for layer, row in zip(deltas.layers, deltas.deltas, strict=True):
            writer.add_tensor(f"direction.{layer}", row.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(temporary, 0o644)  # mkstemp's file is private; an exported vector is for sharing
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def control_vector_bytes(deltas: VariantDeltas, model_hint: str, metadata: Mapping[str, str] | None = None) -> bytes:
    """The GGUF control vector as bytes (the dashboard's download)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "control_vector.gguf"
        write_control_vector(deltas, path, model_hint, metadata)
        return path.read_bytes()


def safetensors_bytes(deltas: VariantDeltas, metadata: Mapping[str, str] | None = None) -> bytes:
    """One tensor per layer (keys are layer numbers) plus SteerLab's ``directions`` and metadata."""
    vector = deltas.as_vector()
    tensors = {"directions": vector.directions.contiguous()}
    # safetensors refuses tensors that share memory: each layer's row is its own copy.
    tensors.update({str(layer): row.clone() for layer, row in zip(vector.layers, vector.directions, strict=True)})
    return save(tensors, metadata={**vector.metadata(), **{f"extra.{k}": v for k, v in (metadata or {}).items()}})


# --- reading ---------------------------------------------------------------------------------


def load_any_vector(path: str | Path, name: str | None = None) -> SteeringVector:
    """A vector file of any format read here, by its content (not its name), checked like SteerLab's own."""
    file = Path(path)
    source, data = read_vector_file(file)
    if data[:4] == GGUF_MAGIC:
        return read_control_vector(file, source, name)
    if is_other_tool_file(data):  # torch.save's zip, or a bare pickle
        return read_torch_vectors(file, source, name)
    return vector_from_safetensors(data, source, name or file.stem)


def is_other_tool_file(head: bytes) -> bool:
    """Whether a file (its first bytes) is a GGUF or a torch/pickle file rather than safetensors."""
    return head[:4] in (GGUF_MAGIC, _ZIP_MAGIC) or head[:1] == _PICKLE_MAGIC


def vector_from_upload(content: bytes, filename: str, name: str) -> SteeringVector:
    """An uploaded file of any format read here (GGUF needs a file on disk: a private temporary one)."""
    source = f"Uploaded file '{short(printable(filename), 80)}'"
    limits.check(limits.MAX_FILE_BYTES, len(content), source)
    if is_other_tool_file(content):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "upload"
            path.write_bytes(content)
            if content[:4] == GGUF_MAGIC:
                return read_control_vector(path, source, name)
            return read_torch_vectors(path, source, name)
    return vector_from_safetensors(content, source, name)


def vector_from_safetensors(data: bytes, source: str, name: str | None) -> SteeringVector:
    """SteerLab's own file, or one tensor per layer keyed by layer number (``5``, ``layers.5``)."""
    limits.check(limits.MAX_FILE_BYTES, len(data), source)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as exc:
        raise SteerLabError(
            f"{source} is not a readable safetensors vector file ({printable(short(str(exc), 160))}); "
            "save it again with SteerLab."
        ) from exc
    if "directions" not in tensors and tensors and all(_layer_number(k) is not None for k in tensors):
        vector = read_layer_dict(tensors, source, name or "vector", UNKNOWN)
        return _with_extra(vector, source_format="safetensors-layers")
    return SteeringVector.from_bytes(data, source=source, name=name)


def read_control_vector(path: Path, source: str, name: str | None = None) -> SteeringVector:
    """A llama.cpp / repeng control-vector GGUF: ``direction.N`` tensors, N from 1 (SteerLab's layer N)."""
    import gguf

    # The reader logs a warning per oddity it skips in a damaged file; the one sentence below says it all.
    reader_log = logging.getLogger("gguf.gguf_reader")
    level = reader_log.level
    reader_log.setLevel(logging.ERROR)
    try:
        reader = gguf.GGUFReader(str(path))
        architecture = _field_text(reader, "general.architecture")
        hint = _field_text(reader, f"{CONTROL_VECTOR_ARCH}.model_hint")
        steerlab = {
            key[len("steerlab.") :]: _field_text(reader, key)
            for key in reader.fields
            if key.startswith("steerlab.") and key != "steerlab.coefficient_value"
        }
        rows: dict[int, np.ndarray] = {}
        for tensor in reader.tensors:
            if not tensor.name.startswith("direction."):
                continue
            layer = _direction_layer(tensor.name, source)
            kind = gguf.GGMLQuantizationType(tensor.tensor_type)
            floats = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F64)
            if kind not in floats or len(tensor.shape) != 1:
                raise SteerLabError(
                    f"{source} holds {tensor.name} as a {kind.name} tensor of shape {list(map(int, tensor.shape))}, "
                    "not the one row of 32-bit floats llama.cpp reads; export the vector again."
                )
            rows[layer] = np.array(tensor.data, dtype=np.float32).reshape(-1)
    except SteerLabError:
        raise
    except Exception as exc:  # a damaged file fails anywhere in the reader: one sentence for all of it
        raise SteerLabError(
            f"{source} is not a readable GGUF file ({printable(short(_reason(exc), 120))}); "
            "export the control vector again."
        ) from exc
    finally:
        reader_log.setLevel(level)
    if architecture != CONTROL_VECTOR_ARCH:
        raise SteerLabError(
            f"{source} is a GGUF file of architecture '{short(printable(architecture or 'none'), 40)}', not a control "
            "vector ('controlvector'); give a control-vector file (llama.cpp's cvector-generator or repeng's export)."
        )
    if not rows:
        raise SteerLabError(
            f"{source} is a control vector without any direction.N tensor; export the control vector again."
        )
    convention = steerlab.get("norm_convention", "")
    vector = read_layer_dict(
        {layer: torch.from_numpy(row) for layer, row in rows.items()},
        source,
        name or steerlab.get("variant") or path.stem,
        convention if convention in NORM_CONVENTIONS else UNKNOWN,
        model_id=steerlab.get("model_id", ""),
    )
    extra = {k: v for k, v in steerlab.items() if k not in ("model_id", "source_format")}
    return _with_extra(vector, source_format="llama.cpp-control-vector", model_hint=hint, **extra)


def read_torch_vectors(path: Path, source: str, name: str | None = None) -> SteeringVector:
    """A ``{layer: tensor}`` dict saved with ``torch.save`` (steering-vectors' ``layer_activations``).

    ``weights_only=True`` unpickles tensors and plain containers only: a file that asks for
    any other object (a whole SteeringVector, or anything hostile) is refused, never run.
    """
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on its way to refusing a file
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, a damaged zip, a truncated pickle: nothing was executed
        raise SteerLabError(
            f"{source} is not a plain dict of tensors saved with torch.save ({printable(short(_reason(exc), 120))}); "
            "save the steering-vectors vector as torch.save(vector.layer_activations, path)."
        ) from exc
    if not isinstance(loaded, Mapping) or not loaded:
        raise SteerLabError(
            f"{source} holds a {type(loaded).__name__}, not a dict of layer number to tensor; "
            "save the steering-vectors vector as torch.save(vector.layer_activations, path)."
        )
    vector = read_layer_dict(loaded, source, name or path.stem, MEAN_DIFFERENCE)
    return _with_extra(vector, source_format="steering-vectors")


def read_layer_dict(
    tensors: Mapping[Any, Any], source: str, name: str, convention: str, model_id: str = ""
) -> SteeringVector:
    """Directions keyed by layer number (SteerLab's numbering: the block whose output is edited).

    ``convention`` is what the source format's vectors usually are; a file whose every row has
    length 1 is recorded as unit-norm whatever the format, and one recorded as baked stays so.
    """
    rows: dict[int, torch.Tensor] = {}
    for key, value in tensors.items():
        layer = _layer_number(key)
        if layer is None:
            raise SteerLabError(
                f"{source} has an entry named {short(printable(str(key)), 40)!r}, not a layer number; "
                "key each direction by its layer (0 is the first decoder block's output)."
            )
        if layer < 0:
            raise SteerLabError(
                f"{source} names layer {layer}, counted from the last block; save it with layers counted from 0 "
                "(the first decoder block's output)."
            )
        if layer in rows:
            raise SteerLabError(f"{source} holds layer {layer} twice; keep one direction per layer.")
        if not isinstance(value, torch.Tensor):
            raise SteerLabError(
                f"{source} holds a {type(value).__name__} for layer {layer}, not a tensor; save tensors only."
            )
        if not value.dtype.is_floating_point:
            raise SteerLabError(
                f"{source} holds {value.dtype} numbers at layer {layer}, not floating point; save floats."
            )
        flat = value.detach().to(torch.float32).reshape(-1) if value.ndim == 2 and value.shape[0] == 1 else value
        if flat.ndim != 1 or flat.shape[0] == 0:
            raise SteerLabError(
                f"{source} holds a tensor of shape {list(value.shape)} at layer {layer}, not one row of the hidden "
                "size; save one direction per layer."
            )
        rows[layer] = flat.detach().to(torch.float32).contiguous()
    sizes = {int(row.shape[0]) for row in rows.values()}
    if len(sizes) > 1:
        raise SteerLabError(
            f"{source} holds directions of different sizes ({', '.join(map(str, sorted(sizes)))}); "
            "every layer's direction must have the model's hidden size."
        )
    layers = tuple(sorted(rows))
    directions = torch.stack([rows[layer] for layer in layers])
    if not bool(torch.isfinite(directions).all()):
        raise SteerLabError(f"{source} holds NaN or infinite numbers; extract or export the vector again.")
    largest = float(directions.abs().max())
    if largest > MAX_ABS_VALUE:
        raise SteerLabError(
            f"{source} holds a number of magnitude {largest:.3g}, above the {MAX_ABS_VALUE:g} a direction can "
            "sensibly hold; extract or export the vector again."
        )
    if convention != BAKED and looks_unit_norm(directions):
        convention = UNIT_NORM
    return SteeringVector(
        name=name, directions=directions, layers=layers, model_id=model_id, extra={"norm_convention": convention}
    )


def describe_vector(vector: SteeringVector) -> list[str]:
    """What was read, for people: layers, hidden size, norms, norm convention (CLI import, listings)."""
    norms = vector.layer_norms()
    shown = ", ".join(f"{layer}: {norm:.3g}" for layer, norm in list(norms.items())[:12])
    more = f" (and {len(norms) - 12} more)" if len(norms) > 12 else ""
    lines = [
        f"vector '{vector.name}': {len(vector.layers)} layers ({_ranges(vector.layers)}), hidden size {vector.hidden_size}",
        f"norm convention: {vector.norm_convention} ({NORM_CONVENTIONS[vector.norm_convention]})",
        f"per-layer norms: {shown}{more}",
    ]
    source = vector.extra.get("source_format", "")
    hint = vector.extra.get("model_hint", "")
    if source or hint or vector.model_id:
        parts = [f"format {source}" if source else "", f"model hint '{hint}'" if hint else ""]
        parts.append(f"model '{vector.model_id}'" if vector.model_id else "")
        lines.append("read from: " + ", ".join(p for p in parts if p))
    if vector.norm_convention == UNIT_NORM:
        lines.append(
            "unit-norm directions need coefficients of the order of the model's hidden-state norm (often tens), "
            "not the 1 or so a mean difference takes"
        )
    if vector.norm_convention == BAKED:
        coefficient = vector.extra.get("coefficient", "")
        lines.append(
            "use it with coefficient 1 at these layers"
            + (f" (the coefficient {coefficient} is already multiplied in)" if coefficient else "")
        )
    return lines


def small_coefficient_warnings(
    experiment: str,
    variants: Sequence[VariantSpec],
    vectors: Mapping[str, SteeringVector],
    hidden_norms: Mapping[int, float],
) -> list[str]:
    """One sentence per (variant, vector) that adds a unit-norm vector too weakly to move the model.

    ``hidden_norms`` is the model's typical hidden-state norm at each block's output.
    """
    out = []
    for variant in variants:
        for intervention in variant.interventions:
            if intervention.name not in _ADDITIVE:
                continue
            vector = vectors.get(intervention.vector_names()[0])
            if vector is None or vector.norm_convention != UNIT_NORM:
                continue
            coefficient = float(intervention.to_dict()["coefficient"])
            norms = vector.layer_norms()
            pushes = [
                (abs(coefficient) * norms[layer] / hidden_norms[layer], layer)
                for layer in intervention.layers
                if layer in norms and hidden_norms.get(layer, 0.0) > 0.0
            ]
            if not pushes:
                continue
            share, layer = max(pushes)
            if share < SMALL_PUSH:
                out.append(
                    f"Variant '{variant.name}' of experiment '{experiment}' adds unit-norm vector '{vector.name}' "
                    f"with coefficient {coefficient:g}, only {share:.2%} of the model's typical hidden-state norm "
                    f"({hidden_norms[layer]:.3g} at layer {layer}); unit-norm (repeng-style) vectors need coefficients "
                    "of the order of that norm, so try a far larger one."
                )
    return out


def _with_extra(vector: SteeringVector, **extra: str) -> SteeringVector:
    return SteeringVector(
        name=vector.name,
        directions=vector.directions,
        layers=vector.layers,
        model_id=vector.model_id,
        method=vector.method,
        read=vector.read,
        pairs_hash=vector.pairs_hash,
        extraction_seconds=vector.extraction_seconds,
        extra={**vector.extra, **{k: v for k, v in extra.items() if v}},
    )


def _layer_number(key: object) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, str):
        match = _LAYER_KEY.match(key.strip())
        return int(match.group(1)) if match else None
    return None


def _direction_layer(tensor_name: str, source: str) -> int:
    text = tensor_name[len("direction.") :]
    if not text.isdigit():
        raise SteerLabError(
            f"{source} holds a tensor named {short(printable(tensor_name), 40)!r}, not direction.N with a layer "
            "number N; export the control vector again."
        )
    layer = int(text)
    if layer == 0:
        raise SteerLabError(
            f"{source} holds direction.0, which llama.cpp refuses (it never steers layer 0's input); "
            "export the control vector again."
        )
    return layer


def _field_text(reader: Any, key: str) -> str:
    found = reader.get_field(key)
    if found is None:
        return ""
    value = found.contents()
    return value if isinstance(value, str) else str(value)


def _reason(exc: BaseException) -> str:
    """The line of a library's error that says what was wrong (torch's name the refused global or opcode)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = [line for line in lines if "unsupported" in line.lower() and "WeightsUnpickler" not in line]
    return (telling or lines or [type(exc).__name__])[0].split(". ")[0]


def _ranges(layers: Sequence[int]) -> str:
    """``1-4, 7`` for (1, 2, 3, 4, 7)."""
    out: list[str] = []
    start = previous = None
    for layer in [*layers, math.inf]:
        if previous is not None and layer == previous + 1:
            previous = int(layer)
            continue
        if start is not None and previous is not None:
            out.append(str(start) if start == previous else f"{start}-{previous}")
        if layer != math.inf:
            start = previous = int(layer)
    return ", ".join(out)
