"""``python -m engine bench``: steering's cost, measured as ratios within one process.

Figures (each a median over interleaved repeats, so machine noise hits both sides):
- ``steer_overhead_ratio``: a batch with every row steered at one layer / the same batch unsteered;
- ``mixed_batch_speedup``: 8 variants x 8 prompts run one variant at a time (8 batches of 8)
  / the same 64 rows as one mixed batch;
- ``toggle_ms``: attach + detach of a 3-layer edit;
- ``reversibility_max_abs_diff``: largest logit difference between the untouched model
  and the model after an edit was attached, used and removed (must be 0.0).
Headline keys are for the GPT-2-small-sized model (12 layers, hidden 768, random
weights); ``models`` holds the figures of each model measured.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from engine.generation import Decoding, generate
from engine.measure import measure_reversibility, toggle_milliseconds
from engine.methods.add import AddVector
from engine.methods.base import PreparedEdit
from engine.models import LoadedModel, load_model, wrap_model
from engine.steering import BatchSteering
from engine.vectors import SteeringVector

TINYSTORIES = "raincandy-u/TinyStories-656K"


def run_benchmarks(quick: bool = False, log: Callable[[str], None] = lambda _line: None) -> dict[str, Any]:
    torch.manual_seed(0)
    tiny = load_model(TINYSTORIES, device="cpu")
    gpt2 = _gpt2_sized(tiny, quick)
    repeats = 2 if quick else 5
    new_tokens = 8 if quick else 32
    figures: dict[str, Any] = {
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "settings": {"repeats": repeats, "new_tokens": new_tokens, "variants": 8, "prompts": 8, "quick": quick},
        "models": {},
    }
    gpt2_label = "gpt2-small-random"
    for label, model in (("tinystories-656k", tiny), (gpt2_label, gpt2)):
        log(f"measuring {label} ({model.n_layers} layers, hidden {model.hidden_size}) ...")
        figures["models"][label] = measure_model(model, repeats, new_tokens, log)
    headline = figures["models"]["gpt2-small-random"]
    for key in ("steer_overhead_ratio", "mixed_batch_speedup", "toggle_ms"):
        figures[key] = headline[key]
    figures["reversibility_max_abs_diff"] = max(m["reversibility_max_abs_diff"] for m in figures["models"].values())
    figures["targets"] = {
        "steer_overhead_ratio": "<= 1.05",
        "mixed_batch_speedup": ">= 3 (2 CPU cores, GPT-2-small size)",
        "toggle_ms": "< 1",
        "reversibility_max_abs_diff": "== 0.0",
    }
    return figures


def measure_model(model: LoadedModel, repeats: int, new_tokens: int, log: Callable[[str], None]) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1)
    vector = SteeringVector(
        "bench", torch.randn(model.n_layers, model.hidden_size, generator=generator), tuple(range(model.n_layers))
    )
    vocab = min(int(model.model.config.vocab_size), 2048)
    prompts = [torch.randint(3, vocab, (12,), generator=generator).tolist() for _ in range(8)]
    decoding = Decoding(max_new_tokens=new_tokens, stop_at_eos=False)
    middle = model.n_layers // 2

    def edit(layers: Sequence[int], coefficient: float) -> PreparedEdit:
        return AddVector("bench", tuple(layers), coefficient).prepare(model, {"bench": vector})

    one_layer = edit([middle], 0.5)
    plain_time, steered_time = _interleaved(
        repeats,
        lambda: generate(model, prompts, decoding),
        lambda: generate(model, prompts, decoding, steering=BatchSteering(model, [[one_layer]] * len(prompts))),
    )
    log(f"  steered batch {steered_time * 1000:.1f} ms vs plain {plain_time * 1000:.1f} ms")

    variants: list[list[PreparedEdit]] = [[]] + [
        [edit([layer % model.n_layers], coefficient)]
        for layer, coefficient in zip(range(7), (0.25, 0.5, 1, -0.5, 2, -1, 0.75), strict=True)
    ]
    mixed_rows = [(prompt, v) for v in variants for prompt in prompts]

    def sequential() -> None:
        for v in variants:
            generate(model, prompts, decoding, steering=BatchSteering(model, [v] * len(prompts)))

    def mixed() -> None:
        generate(model, [p for p, _ in mixed_rows], decoding, steering=BatchSteering(model, [v for _, v in mixed_rows]))

    sequential_time, mixed_time = _interleaved(max(1, repeats // 2), sequential, mixed)
    log(f"  8 variants one after another {sequential_time:.2f} s vs one mixed batch {mixed_time:.2f} s")

    three = edit([0, middle, model.n_layers - 1], 1.0)
    toggle = toggle_milliseconds(BatchSteering(model, [[three]]), repeats=200)

    reversibility = measure_reversibility(model, [three], prompts[0]).max_abs_logit_diff
    return {
        "layers": model.n_layers,
        "hidden_size": model.hidden_size,
        "parameters": sum(p.numel() for p in model.model.parameters()),
        "plain_batch_seconds": plain_time,
        "steered_batch_seconds": steered_time,
        "steer_overhead_ratio": steered_time / plain_time,
        "sequential_variants_seconds": sequential_time,
        "mixed_batch_seconds": mixed_time,
        "mixed_batch_speedup": sequential_time / mixed_time,
        "toggle_ms": toggle,
        "reversibility_max_abs_diff": reversibility,
    }


def _interleaved(repeats: int, first: Callable[[], object], second: Callable[[], object]) -> tuple[float, float]:
    """Median seconds of two jobs, run alternately after one warm-up each."""
    first()
    second()
    a, b = [], []
    for _ in range(repeats):
        a.append(_seconds(first))
        b.append(_seconds(second))
    return statistics.median(a), statistics.median(b)


def _seconds(job: Callable[[], object]) -> float:
    started = time.perf_counter()
    job()
    return time.perf_counter() - started


def _gpt2_sized(tokenizer_source: LoadedModel, quick: bool) -> LoadedModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=4, n_embd=256, n_head=4) if quick else GPT2Config(n_layer=12, n_embd=768, n_head=12)
    model = GPT2LMHeadModel(config)
    # Random weights need no tokenizer of their own: prompts are random token ids and only
    # the pad id is read from this one.
    return wrap_model("gpt2-small-random" if not quick else "gpt2-mini-random", model, tokenizer_source.tokenizer)
