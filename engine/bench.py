"""``python -m engine bench``: steering's cost, measured as ratios within one process.

Figures (each a median over interleaved repeats, so machine noise hits both sides):
- ``steer_overhead_ratio``: a batch with every row steered at one layer / the same batch unsteered;
- ``mixed_batch_speedup`` (batching): 8 variants x 8 prompts run one variant at a time
  (8 batches of 8) / the same 64 rows as one mixed batch;
- ``mixing_cost_ratio`` (mixing): one batch of 64 rows that each carry a different
  variant (64 distinct additions) / the same 64 rows all carrying one variant; 1.0 means
  mixing is free. ``mixing_cost_ratio_gather_scatter`` is the same with the fused
  addition path turned off (what distinct non-additive edits cost);
- ``plain_tokens_per_second`` / ``steered_tokens_per_second``: generated tokens of the
  overhead batch per second (prefill included);
- ``toggle_ms``: attach + detach of a 3-layer edit;
- ``reversibility_max_abs_diff``: largest logit difference between the untouched model
  and the model after an edit was attached, used and removed (must be 0.0).
Headline keys are for the GPT-2-small-sized model (12 layers, hidden 768, random
weights), except ``mixing_cost_ratio`` and the ``smollm2_*`` keys, which come from the
real instruct model SmolLM2-135M-Instruct (30 layers, hidden 576, from the shared GGUF
file, prompted through its chat template); ``models`` holds the figures of each model.

``steerlab bench decode`` (:func:`run_decode_benchmark`) measures what a decode step costs
as the text grows and what batching buys, on the GPT-2-small-sized model: ``step_ms`` at
the start and at 256 generated tokens with transformers' dynamic cache (extended by
``torch.cat`` at every step) and with the preallocated cache of :mod:`engine.kv_cache`,
the two runs stepping in lockstep so machine noise hits both; and
``mixed_tokens_per_second`` (decode tokens/s) of batches of 8, 16, 32 and 64 rows, each row its own variant,
stepping in lockstep too (what the default batch size is chosen from).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.chat import Message, render_chat
from engine.generation import Decoding, forward, generate, left_pad, positions_from_mask
from engine.kv_cache import new_cache
from engine.layers import hidden_output
from engine.measure import measure_reversibility, toggle_milliseconds
from engine.methods.add import AddVector
from engine.methods.base import PositionMasks, PreparedEdit
from engine.models import LoadedModel, load_model, wrap_model
from engine.steering import BatchSteering
from engine.vectors import SteeringVector

TINYSTORIES = "raincandy-u/TinyStories-656K"
# The shared folder beside the project, as the tests and the demo experiment expect it.
SMOLLM2 = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "models"
    / "smollm2-135m-instruct"
    / ("SmolLM2-135M-Instruct.Q4_1.gguf")
)
SMOLLM2_LABEL = "smollm2-135m-instruct"
QUESTIONS = (
    "How do I make a cup of tea?",
    "What should I pack for a weekend trip?",
    "Can you explain what a budget is?",
    "Why is the sky blue?",
    "Give me a tip for learning a new language.",
    "What is a good name for a cat?",
    "How can I sleep better?",
    "Describe a rainy afternoon.",
)


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
    # SmolLM2 (135M parameters, 30 layers) decodes far slower on a CPU than the models above: fewer tokens.
    real_settings = (
        {"mixing_rows": 16, "new_tokens": 4, "repeats": 1}
        if quick
        else {"mixing_rows": 64, "new_tokens": 16, "repeats": 3}
    )
    figures["settings"]["smollm2"] = real_settings
    if SMOLLM2.is_file():
        log(f"loading SmolLM2-135M-Instruct from {SMOLLM2} ...")
        smollm2 = load_model(str(SMOLLM2), device="cpu")
        log(f"measuring {SMOLLM2_LABEL} ({smollm2.n_layers} layers, hidden {smollm2.hidden_size}) ...")
        real = measure_real_model(smollm2, log=log, **real_settings)
        figures["models"][SMOLLM2_LABEL] = real
        figures["mixing_cost_ratio"] = real["mixing_cost_ratio"]
        for key in ("steer_overhead_ratio", "plain_tokens_per_second", "steered_tokens_per_second"):
            figures[f"smollm2_{key}"] = real[key]
    else:
        log(f"SmolLM2 left out: {SMOLLM2} is missing (clone with ../shared beside the project)")
    figures["reversibility_max_abs_diff"] = max(m["reversibility_max_abs_diff"] for m in figures["models"].values())
    figures["targets"] = {
        "steer_overhead_ratio": "<= 1.05",
        "mixed_batch_speedup": ">= 3 (2 CPU cores, GPT-2-small size)",
        "mixing_cost_ratio": "<= 1.05 (64 distinct variants in one batch cost at most 5% more than one)",
        "toggle_ms": "< 1",
        "reversibility_max_abs_diff": "== 0.0",
    }
    return figures


def measure_real_model(
    model: LoadedModel, repeats: int, new_tokens: int, mixing_rows: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Overhead, tokens per second and the cost of mixing on a chat model, prompted through its template.

    Ratios are medians of per-repeat ratios: the two sides of a ratio run back to back, so
    load from other processes on the machine mostly cancels out.
    """
    generator = torch.Generator().manual_seed(2)
    # Random directions scaled to a tenth of a typical hidden state's length: big enough
    # to change the text, small enough to keep the decode realistic.
    scale = 0.1 * _typical_hidden_norm(model) / model.hidden_size**0.5
    vectors = [
        SteeringVector(
            f"bench{i}",
            torch.randn(model.n_layers, model.hidden_size, generator=generator) * scale,
            tuple(range(model.n_layers)),
        )
        for i in range(8)
    ]
    prompts = [list(render_chat(model.tokenizer, [Message("user", q)]).tokens) for q in QUESTIONS]
    decoding = Decoding(max_new_tokens=new_tokens, stop_at_eos=False)
    middle = model.n_layers // 2

    def edit(vector: SteeringVector, layers: Sequence[int], coefficient: float) -> PreparedEdit:
        return AddVector(vector.name, tuple(layers), coefficient).prepare(model, {vector.name: vector})

    one_layer = edit(vectors[0], [middle], 4.0)
    plain, steered = _interleaved_all(
        repeats,
        lambda: generate(model, prompts, decoding),
        lambda: generate(model, prompts, decoding, steering=BatchSteering(model, [[one_layer]] * len(prompts))),
    )
    plain_time, steered_time = statistics.median(plain), statistics.median(steered)
    tokens = len(prompts) * new_tokens
    log(f"  steered batch of {len(prompts)} {steered_time * 1000:.1f} ms vs plain {plain_time * 1000:.1f} ms")

    # Mixing: the same rows, each with its own variant (vector x coefficient, all at the
    # same three layers so both sides hook the same layers) or all with the first one.
    coefficients = (1.0, 2.0, 3.0, 4.0, -1.0, -2.0, -3.0, -4.0)
    three_layers = [middle - 4, middle, middle + 4]
    distinct = [[edit(v, three_layers, c)] for v in vectors for c in coefficients][:mixing_rows]
    rows = [prompts[i % len(prompts)] for i in range(mixing_rows)]
    one_variant = [distinct[0]] * mixing_rows
    uniform, mixed, gathered = _interleaved_all(
        repeats,
        lambda: generate(model, rows, decoding, steering=BatchSteering(model, one_variant)),
        lambda: generate(model, rows, decoding, steering=BatchSteering(model, distinct)),
        lambda: generate(model, rows, decoding, steering=BatchSteering(model, distinct, fuse_additions=False)),
    )
    uniform_time, mixed_time, gathered_time = (statistics.median(t) for t in (uniform, mixed, gathered))
    log(
        f"  {mixing_rows} rows: one variant {uniform_time:.2f} s, {mixing_rows} variants mixed {mixed_time:.2f} s "
        f"(gather/scatter path {gathered_time:.2f} s)"
    )

    three = edit(vectors[0], [0, middle, model.n_layers - 1], 1.0)
    return {
        **_model_figures(model, three, prompts[0], plain_time, steered_time),
        "steer_overhead_ratio": _paired_ratio(steered, plain),
        "plain_tokens_per_second": tokens / plain_time,
        "steered_tokens_per_second": tokens / steered_time,
        "mixing_rows": mixing_rows,
        "one_variant_batch_seconds": uniform_time,
        "mixed_variants_batch_seconds": mixed_time,
        "mixing_cost_ratio": _paired_ratio(mixed, uniform),
        "mixing_cost_ratio_gather_scatter": _paired_ratio(gathered, uniform),
        "mixed_tokens_per_second": mixing_rows * new_tokens / mixed_time,
    }


def _typical_hidden_norm(model: LoadedModel) -> float:
    """Median length of the middle layer's hidden states over a short templated prompt."""
    captured: list[torch.Tensor] = []

    def capture(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        hidden = hidden_output(output)
        assert isinstance(hidden, torch.Tensor)
        captured.append(hidden.detach())

    handle = model.layers[model.n_layers // 2].register_forward_hook(capture)
    try:
        ids, mask = left_pad(model, [list(render_chat(model.tokenizer, [Message("user", QUESTIONS[0])]).tokens)])
        with torch.no_grad():
            forward(model, ids, mask, positions_from_mask(mask))
    finally:
        handle.remove()
    return float(captured[0][0].norm(dim=-1).median())


def run_decode_benchmark(quick: bool = False, log: Callable[[str], None] = lambda _line: None) -> dict[str, Any]:
    """Decode-step figures on the GPT-2-small-sized model (``quick``: a 4-layer one, few steps)."""
    torch.manual_seed(0)
    model = _gpt2_sized(load_model(TINYSTORIES, device="cpu"), quick)
    log(f"measuring decode steps on {model.model_id} ({model.n_layers} layers, hidden {model.hidden_size}) ...")
    return {
        "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__},
        "model": model.model_id,
        **measure_decode(model, quick, log),
    }


def measure_decode(model: LoadedModel, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Decode-step time by length with either cache, and mixed-batch throughput by batch size."""
    return {**measure_step_times(model, quick, log), **measure_batch_sizes(model, quick, log)}


def measure_step_times(model: LoadedModel, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Milliseconds per decode step at the start and at the end of a long run, with either cache."""
    rows, steps = (4, 12) if quick else (16, 256)
    window = 3 if quick else 8  # steps whose median is "the start" and "the end"
    generator = torch.Generator().manual_seed(3)
    vocab = min(int(model.model.config.vocab_size), 2048)
    prompts = [torch.randint(3, vocab, (12,), generator=generator).tolist() for _ in range(rows)]
    batches = [_Lockstep(prompts, preallocate=False), _Lockstep(prompts)]
    _lockstep_step_seconds(model, batches, window, log)  # warm-up: the first passes allocate and spin threads up
    dynamic, preallocated = _lockstep_step_seconds(model, batches, steps, log)
    step_ms = {
        name: {
            "start": 1000 * statistics.median(times[:window]),
            f"at_{steps}": 1000 * statistics.median(times[-window:]),
        }
        for name, times in (("dynamic", dynamic), ("preallocated", preallocated))
    }
    log(
        f"  decode step of {rows} rows, start / at {steps} tokens: dynamic cache "
        f"{step_ms['dynamic']['start']:.1f} / {step_ms['dynamic'][f'at_{steps}']:.1f} ms, preallocated "
        f"{step_ms['preallocated']['start']:.1f} / {step_ms['preallocated'][f'at_{steps}']:.1f} ms"
    )
    return {
        "rows": rows,
        "generated_tokens": steps,
        "step_ms": step_ms,
        "slowdown_at_end": {name: v[f"at_{steps}"] / v["start"] for name, v in step_ms.items()},
        "preallocated_speedup_at_end": step_ms["dynamic"][f"at_{steps}"] / step_ms["preallocated"][f"at_{steps}"],
    }


def measure_batch_sizes(model: LoadedModel, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Decode tokens per second of mixed batches (every row its own variant) by batch size.

    The batches decode in lockstep, one step of each in turn, and each figure is the batch
    size over its median step time: load from other processes hits every size alike.
    """
    generator = torch.Generator().manual_seed(4)
    vocab = min(int(model.model.config.vocab_size), 2048)
    sizes = (8, 16) if quick else (8, 16, 32, 64)
    steps = 4 if quick else 32
    vector = SteeringVector(
        "bench", torch.randn(model.n_layers, model.hidden_size, generator=generator), tuple(range(model.n_layers))
    )
    middle = model.n_layers // 2
    batches = []
    for size in sizes:
        # Every row its own variant: a distinct coefficient at the same layer.
        edits = [[AddVector("bench", (middle,), 0.05 * (i + 1)).prepare(model, {"bench": vector})] for i in range(size)]
        prompts = [torch.randint(3, vocab, (12,), generator=generator).tolist() for _ in range(size)]
        batches.append(_Lockstep(prompts, BatchSteering(model, edits)))
    _lockstep_step_seconds(model, batches, 2, log)  # warm-up: the first passes allocate and spin threads up
    times = _lockstep_step_seconds(model, batches, steps, log)
    throughput = {str(size): size / statistics.median(t) for size, t in zip(sizes, times, strict=True)}
    log("  mixed batches, decode tokens/s: " + ", ".join(f"{size} rows {tps:.0f}" for size, tps in throughput.items()))
    return {
        "mixed_decode_steps": steps,
        "mixed_tokens_per_second": throughput,
        "mixed_speedup_over_8": {size: tps / throughput["8"] for size, tps in throughput.items()},
    }


@dataclass
class _Lockstep:
    """One batch of a lockstep measurement: its prompts, steering and cache kind."""

    prompts: Sequence[Sequence[int]]
    steering: BatchSteering | None = None
    preallocate: bool = True


def _lockstep_step_seconds(
    model: LoadedModel, batches: Sequence[_Lockstep], steps: int, log: Callable[[str], None]
) -> list[list[float]]:
    """Seconds of each greedy decode step of every batch, the batches taking one step each in turn."""
    runs = []
    with torch.no_grad():
        for batch in batches:
            ids, mask = left_pad(model, batch.prompts)
            positions = positions_from_mask(mask)
            cache = new_cache(model.model, model.n_layers, mask.shape[1] + steps + 1, batch.preallocate)
            steering = batch.steering
            if steering is not None:
                steering.masks = PositionMasks.prompt_only(mask)
            with steering.attached() if steering is not None else nullcontext():
                result = forward(model, ids, mask, positions, past=cache)
            if steering is not None:
                generated = torch.ones((len(batch.prompts), 1), dtype=torch.bool, device=model.device)
                steering.masks = PositionMasks(torch.zeros_like(generated), generated)
            runs.append([result, mask, positions, []])
        for step in range(steps):
            if step and step % 64 == 0:
                log(f"  {step} of {steps} decode steps ...")
            for batch, run in zip(batches, runs, strict=True):
                result, run_mask, run_positions, times = run
                token = result.logits[:, -1, :].argmax(-1)[:, None]
                run_mask = torch.cat([run_mask, torch.ones_like(run_mask[:, :1])], dim=1)
                run_positions = run_positions[:, -1:] + 1
                started = time.perf_counter()
                with batch.steering.attached() if batch.steering is not None else nullcontext():
                    result = forward(model, token, run_mask, run_positions, past=result.past_key_values)
                times.append(time.perf_counter() - started)
                run[:3] = [result, run_mask, run_positions]
    return [run[3] for run in runs]


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
    return {
        **_model_figures(model, three, prompts[0], plain_time, steered_time),
        "steer_overhead_ratio": steered_time / plain_time,
        "sequential_variants_seconds": sequential_time,
        "mixed_batch_seconds": mixed_time,
        "mixed_batch_speedup": sequential_time / mixed_time,
    }


def _model_figures(
    model: LoadedModel, three_layer_edit: PreparedEdit, prompt: Sequence[int], plain: float, steered: float
) -> dict[str, Any]:
    """The figures every measured model reports: its size, batch times, toggle time and reversibility."""
    return {
        "layers": model.n_layers,
        "hidden_size": model.hidden_size,
        "parameters": sum(p.numel() for p in model.model.parameters()),
        "plain_batch_seconds": plain,
        "steered_batch_seconds": steered,
        "toggle_ms": toggle_milliseconds(BatchSteering(model, [[three_layer_edit]]), repeats=200),
        "reversibility_max_abs_diff": measure_reversibility(model, [three_layer_edit], prompt).max_abs_logit_diff,
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


def _interleaved_all(repeats: int, *jobs: Callable[[], object]) -> list[list[float]]:
    """Seconds of several jobs at each repeat, run in turn after one warm-up each."""
    for job in jobs:
        job()
    times: list[list[float]] = [[] for _ in jobs]
    for _ in range(repeats):
        for job, spent in zip(jobs, times, strict=True):
            spent.append(_seconds(job))
    return times


def _paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of the per-repeat ratios (each pair ran back to back)."""
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


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
