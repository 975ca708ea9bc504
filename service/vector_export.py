"""Export a stored variant's vectors for other tools: a llama.cpp control vector, or safetensors with a model card.

The vectors exported are the ones stored with the experiment (those its outputs were
generated with), each variant's coefficients multiplied in, so the file reproduces the
variant at coefficient 1 (see :mod:`engine.vector_formats` for the formats and the layer
numbering). Exports are for analysts and owners, and each is written to the audit log.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from db import repository as repo
from db.store import Store
from engine.errors import SteerLabError
from engine.fields import printable, short
from engine.spec import ExperimentSpec
from service import audit
from service.access import LOCAL, Identity, require
from service.catalog import get_experiment, stored_spec

if TYPE_CHECKING:  # the vectors need torch: imported when a file is made, not with the Report page
    from engine.vector_formats import VariantDeltas

log = logging.getLogger(__name__)

FORMATS = ("gguf", "safetensors")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_FILE_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ExportedFile:
    """A download: its bytes, a file name and its media type."""

    content: bytes
    filename: str
    mime: str


def steering_variants(store: Store, name: str) -> list[str]:
    """The declared steering variants of an experiment (what the Report page offers to export)."""
    with store.session() as session:
        spec = stored_spec(get_experiment(session, name))
    return [v.name for v in spec.variants if v.interventions and not v.control_of]


def export_variant(store: Store, name: str, variant: str, fmt: str, who: Identity = LOCAL) -> ExportedFile:
    """The variant as a control-vector GGUF, or as a zip of safetensors, model card (and GGUF when it fits)."""
    from engine.vector_formats import control_vector_bytes

    if fmt not in FORMATS:
        raise SteerLabError(f"Format '{short(printable(fmt), 40)}' is not one of {', '.join(FORMATS)}; pick one.")
    require(store, who, name, "analyst", "exporting vectors")
    spec, deltas, facts = _deltas(store, name, variant)
    stem = _file_stem(f"{name}_{variant}")
    if fmt == "gguf":
        _check_gguf(spec, deltas)
        content = control_vector_bytes(deltas, facts.model_hint, facts.metadata())
        result = ExportedFile(content, f"{stem}.gguf", "application/octet-stream")
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for filename, data in _bundle(spec, deltas, facts).items():
                archive.writestr(f"{stem}/{filename}", data)
        result = ExportedFile(buffer.getvalue(), f"{stem}.zip", "application/zip")
    _audit(store, who, name, variant, fmt)
    return result


def write_variant(store: Store, name: str, variant: str, fmt: str, output: str, who: Identity = LOCAL) -> list[Path]:
    """The command line's export: a .gguf file, or a folder of safetensors, model card (and GGUF when it fits)."""
    from engine.vector_formats import write_control_vector

    if fmt not in FORMATS:
        raise SteerLabError(f"Format '{short(printable(fmt), 40)}' is not one of {', '.join(FORMATS)}; pick one.")
    require(store, who, name, "analyst", "exporting vectors")
    target = Path(output)
    spec, deltas, facts = _deltas(store, name, variant)
    if fmt == "gguf":
        _check_gguf(spec, deltas)
        if not target.parent.is_dir():
            raise SteerLabError(f"Folder '{target.parent}' does not exist; create it or pick another -o path.")
        _writing(lambda: write_control_vector(deltas, target, facts.model_hint, facts.metadata()), target)
        written = [target]
    else:
        if target.exists() and not (target.is_dir() and not any(target.iterdir())):
            raise SteerLabError(
                f"'{target}' already exists and is not an empty folder; pick a new folder name for the export."
            )
        if not target.parent.is_dir():
            raise SteerLabError(f"Folder '{target.parent}' does not exist; create it or pick another -o path.")
        files = _bundle(spec, deltas, facts)
        # Written beside the target, then renamed: a killed export leaves no half-written folder.
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        staging.chmod(0o755)  # mkdtemp's folder is private; an export is for sharing
        try:
            for filename, data in files.items():
                (staging / filename).write_bytes(data)
            if target.is_dir():
                target.rmdir()
            _writing(lambda: os.replace(staging, target), target)
        finally:
            if staging.exists():
                for leftover in staging.iterdir():
                    leftover.unlink()
                staging.rmdir()
        written = [target / filename for filename in files]
    _audit(store, who, name, variant, fmt)
    return written


@dataclass(frozen=True)
class _Facts:
    experiment: str
    model_id: str
    model_hint: str
    outputs: int
    votes: int

    def metadata(self) -> dict[str, str]:
        return {
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "experiment_outputs": str(self.outputs),
            "experiment_votes": str(self.votes),
        }


def _deltas(store: Store, name: str, variant_name: str) -> tuple[ExperimentSpec, VariantDeltas, _Facts]:
    from engine.vector_formats import variant_deltas
    from engine.vectors import SteeringVector

    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        stored = {row.name: row.data for row in experiment.vectors}
        counts = next(s for s in repo.experiment_summaries(session) if s.name == name)
    variant = next((v for v in spec.variants if v.name == variant_name), None)
    if variant is None:
        known = ", ".join(v.name for v in spec.variants)
        raise SteerLabError(
            f"Experiment '{name}' has no variant '{short(printable(variant_name), 60)}' (it has {known}); "
            "check the variant's name."
        )
    if variant.control_of:
        raise SteerLabError(
            f"Variant '{variant.name}' of experiment '{name}' is a {variant.control} control of '{variant.control_of}', "
            "whose vector is drawn at run time, not a result to ship; export a declared variant."
        )
    vectors: dict[str, SteeringVector] = {}
    for vector_name in variant.vector_names():
        data = stored.get(vector_name)
        if data is None:
            raise SteerLabError(
                f"Vector '{vector_name}' of experiment '{name}' has not been extracted yet; run the experiment first."
            )
        vectors[vector_name] = SteeringVector.from_bytes(
            data, source=f"stored vector '{vector_name}'", name=vector_name
        )
    model_ids = {v.model_id for v in vectors.values() if v.model_id}
    deltas = variant_deltas(name, variant, vectors, model_ids.pop() if len(model_ids) == 1 else spec.model)
    facts = _Facts(name, spec.model, _model_hint(spec.model), counts.generations, counts.ratings)
    return spec, deltas, facts


def _check_gguf(spec: ExperimentSpec, deltas: VariantDeltas) -> None:
    """Refuse (one sentence) a variant a llama.cpp control vector cannot reproduce, its prompt included."""
    from engine.vector_formats import check_llama_cpp

    variant = next(v for v in spec.variants if v.name == deltas.variant)
    check_llama_cpp(deltas, has_prompt=bool(variant.prefix or variant.system))


def _bundle(spec: ExperimentSpec, deltas: VariantDeltas, facts: _Facts) -> dict[str, bytes]:
    """The safetensors export's files: vectors, model card, and the GGUF when llama.cpp can express the variant."""
    from engine.vector_formats import control_vector_bytes, safetensors_bytes

    stem = _file_stem(deltas.variant)
    files = {f"{stem}.safetensors": safetensors_bytes(deltas, facts.metadata())}
    gguf_note = ""
    try:
        _check_gguf(spec, deltas)
        files[f"{stem}.gguf"] = control_vector_bytes(deltas, facts.model_hint, facts.metadata())
    except SteerLabError as exc:
        gguf_note = str(exc).split("; ")[0] + "."  # the reason, without the advice to export as safetensors
    files["README.md"] = model_card(spec, deltas, facts, stem, gguf_note).encode("utf-8")
    return files


def model_card(spec: ExperimentSpec, deltas: VariantDeltas, facts: _Facts, stem: str, gguf_note: str = "") -> str:
    """A Hugging Face model card (YAML front matter, then what the vector is and how to load it)."""
    from engine.vectors import NORM_CONVENTIONS

    variant = next(v for v in spec.variants if v.name == deltas.variant)
    layers = ", ".join(str(x) for x in deltas.layers)
    coefficient = f"{deltas.coefficient:g}" if deltas.coefficient is not None else "several (see edits below)"
    front = ["---"]
    if _HUB_ID.match(facts.model_id) and not Path(facts.model_id).exists():
        front.append(f"base_model: {facts.model_id}")
    front += ["library_name: steerlab", "tags:", "- steering", "- control-vector", "- steerlab"]
    front.append("---")
    conventions = ", ".join(f"'{n}': {NORM_CONVENTIONS.get(c, c)}" for n, c in sorted(deltas.conventions.items()))
    edits = "\n".join(f"- `{json.dumps(e, sort_keys=True)}`" for e in deltas.edits)
    description = f"\n{variant.description}\n" if variant.description else ""
    prompt_note = (
        "\n**This variant also changes the prompt** (a prefix or system prompt); the vectors here carry only its "
        "steering.\n"
        if variant.prefix or variant.system
        else ""
    )
    gguf = (
        f"""### llama.cpp

```sh
llama-cli -m MODEL.gguf --control-vector {stem}.gguf
```

`direction.N` in the GGUF file is added to the output of decoder block N (counted from 0), the same
numbering as SteerLab's layers; the coefficient is already in it, so use it at scale 1
(`--control-vector-scaled {stem}.gguf 0.5` gives half the strength).
"""
        if not gguf_note
        else f"""### llama.cpp

No GGUF control vector is included: {gguf_note}
"""
    )
    body = f"""
# Steering vector: {deltas.variant} (SteerLab experiment '{facts.experiment}')
{description}{prompt_note}
Exported from SteerLab, where variant **{deltas.variant}** was compared in experiment **{facts.experiment}**
({facts.outputs} outputs, {facts.votes} votes; its report has the statistics).

| | |
|---|---|
| model | `{facts.model_id}` (architecture `{facts.model_hint or "unknown"}`) |
| layers | {layers} (0-based decoder blocks whose output is edited) |
| hidden size | {int(deltas.deltas.shape[1])} |
| method | {deltas.method} ({"h + v" if deltas.method == "add" else "h + v, then rescaled to the length of h"}) |
| scope | {deltas.scope} tokens |
| coefficient | {coefficient}, already multiplied into the vectors (use them at 1) |
| norm convention | baked: the vectors are coefficient x direction; the source vectors were {conventions or "unknown"} |

Edits of the variant:
{edits}

## Files

- `{stem}.safetensors`: one float32 tensor per layer, named by the layer number (`"{deltas.layers[0]}"`, ...),
  plus `directions` (`[layers, hidden]`, SteerLab's format) and metadata.
{f"- `{stem}.gguf`: the same vectors as a llama.cpp control vector." if not gguf_note else ""}

## How to load it

{gguf}
### steering-vectors

```python
from safetensors.torch import load_file
from steering_vectors import SteeringVector

tensors = load_file("{stem}.safetensors")
vector = SteeringVector({{int(k): v for k, v in tensors.items() if k.isdigit()}}, layer_type="decoder_block")
with vector.apply(model, multiplier=1.0):
    ...
```

### SteerLab

```yaml
vectors:
  {stem}: {{file: {stem}.safetensors}}
variants:
  - name: {deltas.variant}
    interventions:
      - {{method: {deltas.method}, vector: {stem}, layers: [{layers}], coefficient: 1.0, scope: {deltas.scope}}}
```
"""
    return "\n".join(front) + "\n" + body


def _model_hint(model_id: str) -> str:
    """The model's architecture as llama.cpp and repeng name it (``config.model_type``, or a GGUF's own)."""
    from engine.models import split_gguf

    try:
        folder, gguf_file = split_gguf(model_id)
        if gguf_file is not None:
            from engine.gguf_header import read_gguf_header

            path = Path(model_id).expanduser()
            if not path.is_file():
                from huggingface_hub import try_to_load_from_cache

                cached = try_to_load_from_cache(folder, gguf_file)
                if not isinstance(cached, str):
                    return ""
                path = Path(cached)
            return str(read_gguf_header(path).metadata.get("general.architecture", ""))
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_id, local_files_only=True)
        return str(getattr(config, "model_type", "") or "")
    except Exception as exc:  # the hint is informative only: llama.cpp does not check it
        log.info("model hint of %s not readable (%s); left empty", model_id, exc)
        return ""


def _file_stem(text: str) -> str:
    return _FILE_SAFE.sub("_", text).strip("._")[:80] or "vector"


def _writing(action: Callable[[], object], target: Path) -> None:
    try:
        action()
    except OSError as exc:
        raise SteerLabError(
            f"The export could not be written to '{target}' ({exc.strerror or exc}); pick another -o path."
        ) from exc


def _audit(store: Store, who: Identity, name: str, variant: str, fmt: str) -> None:
    with store.session() as session:
        audit.record(session, who.user, "exported", name, f"vectors of variant '{variant}' as {fmt}")
