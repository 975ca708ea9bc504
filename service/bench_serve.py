"""``steerlab bench serve``: the steered server under N concurrent clients over loopback.

For each model (the GPT-2-sized random model of ``bench engine`` and SmolLM2-135M) and each
client count (16, 64), the server is measured with every request unsteered, every request
on one steered variant, and every request with its own steering spec (N distinct
configurations); then ``transformers``' ``model.generate`` on the same batch (same prompts,
same number of new tokens), and the time from a kill switch to the first unsteered response.

The clients run in a separate process (the official ``openai`` client, streaming), so their
parsing does not take the server's CPU time slice by slice under one interpreter lock. Every
request asks for exactly ``new_tokens`` tokens (``ignore_eos``), greedy. Throughput is
generated tokens over the wall time from the first request sent to the last token received;
latencies are per request: time to first token, and the mean time per later token.

Heavy imports happen inside functions: the client process imports only the ``openai`` client.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.models import LoadedModel
    from service.serving.context import ServingContext

EXPERIMENT = "serve_bench"
DEPLOYMENT = "serve-bench-live"
SCENARIOS = ("unsteered", "one_variant", "distinct")


def run_serve_benchmark(quick: bool = False, log: Callable[[str], None] = lambda _line: None) -> dict[str, Any]:
    import platform

    import torch

    from engine.bench import SMOLLM2, SMOLLM2_LABEL, TINYSTORIES
    from engine.models import load_model

    torch.manual_seed(0)
    settings = {
        "clients": [16, 64] if not quick else [4, 16],
        "rounds": 1,
        "repeats": 2 if not quick else 1,
        "new_tokens": 32 if not quick else 8,
        "quick": quick,
    }
    figures: dict[str, Any] = {
        "machine": {
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "",
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "settings": settings,
        "models": {},
    }
    tiny = load_model(TINYSTORIES, device="cpu")
    gpt2 = _gpt2_sized(tiny, quick, "cuda" if torch.cuda.is_available() else "cpu")
    models: list[tuple[str, Callable[[], LoadedModel]]] = [(gpt2.model_id, lambda: gpt2)]
    if SMOLLM2.is_file():
        models.append((SMOLLM2_LABEL, lambda: load_model(str(SMOLLM2))))
    else:
        log(f"SmolLM2 left out: {SMOLLM2} is missing (clone with ../shared beside the project)")
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as clients:
        for label, loader in models:
            log(f"loading {label} ...")
            model = loader()
            log(f"measuring {label} ({model.n_layers} layers, hidden {model.hidden_size}) ...")
            figures["models"][label] = _measure_model(model, settings, clients, log)
    figures["targets"] = {
        "distinct_vs_unsteered": ">= 0.95 (64 distinct configurations keep 95% of unsteered throughput)",
        "server_vs_generate": ">= 1.0 (the server's unsteered throughput at least transformers' generate)",
    }
    return figures


def _gpt2_sized(tokenizer_source: LoadedModel, quick: bool, device: str) -> LoadedModel:
    """A random GPT-2-small body (as ``bench engine`` uses) whose vocabulary is the tokenizer's.

    ``bench engine`` feeds token ids and never reads text; a server streams text, so every
    token the random model writes must be one its tokenizer can decode (50,257 GPT-2 ids
    mostly are not TinyStories tokens). The smaller vocabulary makes the output layer
    cheaper than GPT-2's; the 12 blocks of width 768 are GPT-2 small's.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from engine.models import wrap_model

    tokenizer = tokenizer_source.tokenizer
    layers, width, heads = (4, 256, 4) if quick else (12, 768, 12)
    eos = int(tokenizer.eos_token_id or 0)
    config = GPT2Config(
        n_layer=layers, n_embd=width, n_head=heads, vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos
    )
    model: Any = GPT2LMHeadModel(config)
    model.to(device)
    label = "gpt2-mini-random" if quick else "gpt2-small-random"
    return wrap_model(label, model, tokenizer)


def _measure_model(
    model: LoadedModel, settings: dict[str, Any], clients: ProcessPoolExecutor, log: Callable[[str], None]
) -> dict[str, Any]:
    from db.store import Store
    from service.serving.options import ServeOptions
    from service.serving.server import ServerThread, load_context

    new_tokens = int(settings["new_tokens"])
    out: dict[str, Any] = {"layers": model.n_layers, "hidden": model.hidden_size, "runs": {}, "generate": {}}
    with tempfile.TemporaryDirectory() as folder:
        store = Store(str(Path(folder) / "bench.db"))
        _store_experiment(store, model)
        options = ServeOptions(
            (EXPERIMENT,), max_rows=max(settings["clients"]), max_coefficient=1000.0, max_tokens=new_tokens
        )
        context = load_context(store, options, model)
        with ServerThread(context) as server:
            plain = model.model_id
            warm = [_body(plain, new_tokens, None)] * 4
            clients.submit(_drive, server.base_url, warm, 1).result()
            for n in settings["clients"]:
                runs = _scenario_runs(server.base_url, model, n, settings, clients, log)
                out["runs"].update(runs)
                unsteered = runs[f"{n}/unsteered"]["tokens_per_second"]
                for scenario in SCENARIOS[1:]:
                    runs[f"{n}/{scenario}"]["vs_unsteered"] = runs[f"{n}/{scenario}"]["tokens_per_second"] / unsteered
                generate = _generate_tokens_per_second(context, n, new_tokens)
                out["generate"][str(n)] = {"tokens_per_second": generate, "server_vs_generate": unsteered / generate}
                log(f"  {n} rows, transformers generate: {generate:.0f} tok/s")
            out["kill_switch"] = _kill_switch(context, server.base_url, log)
        store.close()
    return out


def _scenario_runs(
    base_url: str,
    model: LoadedModel,
    n: int,
    settings: dict[str, Any],
    clients: ProcessPoolExecutor,
    log: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Each scenario ``repeats`` times, in a rotating order; the best run of each is kept.

    On a shared machine a run is only ever slowed down by other work, so the best of a few
    interleaved runs is the fairest figure of each scenario (every run is listed too).
    """
    new_tokens, rounds = int(settings["new_tokens"]), int(settings["rounds"])
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in SCENARIOS}
    for repeat in range(int(settings["repeats"])):
        order = SCENARIOS[repeat % len(SCENARIOS) :] + SCENARIOS[: repeat % len(SCENARIOS)]
        for scenario in order:
            bodies = [_scenario_body(scenario, i, model, new_tokens) for i in range(n)]
            figures = _summary(clients.submit(_drive, base_url, bodies, rounds).result())
            runs[scenario].append(figures)
            log(
                f"  {n} clients, {scenario}: {figures['tokens_per_second']:.0f} tok/s, "
                f"first token p50 {figures['first_token_ms_p50']:.0f} ms"
            )
    out: dict[str, dict[str, Any]] = {}
    for scenario, measured in runs.items():
        best = max(measured, key=lambda f: f["tokens_per_second"])
        out[f"{n}/{scenario}"] = {**best, "all_tokens_per_second": [f["tokens_per_second"] for f in measured]}
    return out


def _store_experiment(store: Any, model: LoadedModel) -> None:
    """A stored experiment on ``model``: one vector, a baseline and one steered variant."""
    from engine.fields import Where
    from engine.spec import parse_experiment
    from service.catalog import import_experiment

    middle = model.n_layers // 2
    raw = {
        "name": EXPERIMENT,
        "model": model.model_id,
        "prompts": ["Tell me a story."],
        "vectors": {
            "calm": {
                "pairs": [
                    ["I feel calm and at peace.", "I feel angry and upset."],
                    ["The sea was quiet and still.", "The sea was wild and loud."],
                    ["She spoke softly and smiled.", "She shouted and frowned."],
                ]
            }
        },
        "variants": [
            {"name": "baseline"},
            {
                "name": "calm",
                "interventions": [{"method": "add", "vector": "calm", "layers": [middle], "coefficient": 4}],
            },
        ],
    }
    spec = parse_experiment(raw, Where("serve benchmark"))
    with store.session() as session:
        import_experiment(session, spec, "serve benchmark", {})


def _prompt(index: int) -> str:
    from engine.bench import QUESTIONS

    return QUESTIONS[index % len(QUESTIONS)]


def _body(model: str, new_tokens: int, steering: Any, index: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "prompt": _prompt(index),
        "max_tokens": new_tokens,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    if steering is not None:
        body["extra_body"]["steering"] = steering
    return body


def _scenario_body(scenario: str, index: int, model: LoadedModel, new_tokens: int) -> dict[str, Any]:
    if scenario == "unsteered":
        return _body(model.model_id, new_tokens, None, index)
    if scenario == "one_variant":
        return _body(f"{EXPERIMENT}/calm", new_tokens, None, index)
    # Every client its own configuration: a layer and a coefficient no other client uses.
    spec = {
        "edits": [
            {
                "method": "add",
                "vector": "calm",
                "layers": [index % model.n_layers],
                "coefficient": 1.0 + index / 16,
            }
        ]
    }
    body = _body(EXPERIMENT, new_tokens, spec, index)
    return body


def _drive(base_url: str, bodies: Sequence[dict[str, Any]], rounds: int) -> list[tuple[float, float, float, int]]:
    """In the client process: one concurrent client per body, ``rounds`` requests each, streamed.

    Per request: (sent, first token, last token, tokens), on this process's clock.
    """
    return asyncio.run(_drive_async(base_url, bodies, rounds))


async def _drive_async(
    base_url: str, bodies: Sequence[dict[str, Any]], rounds: int
) -> list[tuple[float, float, float, int]]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)

    async def one_client(body: dict[str, Any]) -> list[tuple[float, float, float, int]]:
        out = []
        for _ in range(rounds):
            sent = time.perf_counter()
            first, tokens = 0.0, 0
            stream = await client.completions.create(**body, stream=True, stream_options={"include_usage": True})
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].text and not first:
                    first = time.perf_counter()
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            done = time.perf_counter()
            out.append((sent, first or done, done, tokens))
        return out

    try:
        results = await asyncio.gather(*(one_client(b) for b in bodies))
    finally:
        await client.close()
    return [timing for client_timings in results for timing in client_timings]


def _summary(timings: Sequence[tuple[float, float, float, int]]) -> dict[str, float]:
    tokens = sum(t[3] for t in timings)
    wall = max(t[2] for t in timings) - min(t[0] for t in timings)
    first = [1000 * (t[1] - t[0]) for t in timings]
    per_token = [1000 * (t[2] - t[1]) / (t[3] - 1) for t in timings if t[3] > 1]
    return {
        "requests": float(len(timings)),
        "tokens": float(tokens),
        "seconds": wall,
        "tokens_per_second": tokens / wall,
        "first_token_ms_p50": _percentile(first, 50),
        "first_token_ms_p95": _percentile(first, 95),
        "per_token_ms_p50": _percentile(per_token, 50),
        "per_token_ms_p95": _percentile(per_token, 95),
    }


def _percentile(values: Sequence[float], percent: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(percent / 100 * len(ordered)) - 1)
    return ordered[rank]


def _generate_tokens_per_second(context: ServingContext, rows: int, new_tokens: int) -> float:
    """``model.generate`` on the batch the server decoded: the same rendered prompts, left-padded, greedy."""
    import torch

    from engine.generation import left_pad
    from engine.prompting import render_prompt
    from service.serving.targets import PLAIN

    model = context.catalog.model
    chat_template = context.catalog.experiments[EXPERIMENT].spec.chat_template
    prompts = [render_prompt(model, _prompt(i), PLAIN, chat_template) for i in range(rows)]
    ids, mask = left_pad(model, prompts)
    pad = model.pad_token_id

    def run() -> float:
        started = time.perf_counter()
        with model.lock, torch.no_grad():
            out = model.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        generated = (out.shape[1] - ids.shape[1]) * rows
        return generated / (time.perf_counter() - started)

    run()  # warm-up
    return max(run(), run())


def _kill_switch(context: ServingContext, base_url: str, log: Callable[[str], None]) -> dict[str, float]:
    """Milliseconds from a kill switch to the first response of the baseline, with clients sending all along.

    The switch is thrown through the store, as ``steerlab deploy stop-variant`` and the dashboard
    do (the server sees it at its next poll of the deployments' version); the admin endpoint
    applies it at once in the replica it reaches.
    """
    from service.access import LOCAL
    from service.deployments import create_deployment, resume_variant, stop_variant

    store = context.store
    create_deployment(
        store, LOCAL, DEPLOYMENT, EXPERIMENT, {"baseline": 0.0, "calm": 1.0}, baseline="baseline", show_variant=True
    )
    context.board.refresh(force=True)
    by_store = asyncio.run(_until_baseline(base_url, lambda: stop_variant(store, LOCAL, DEPLOYMENT, "calm")))
    resume_variant(store, LOCAL, DEPLOYMENT, "calm")
    context.board.refresh(force=True)
    out = {"store_ms": 1000 * by_store, "poll_ms": 1000 * context.options.poll_seconds}
    log(f"  kill switch through the store: first baseline response after {out['store_ms']:.0f} ms")
    return out


async def _until_baseline(base_url: str, switch: Callable[[], object], senders: int = 4) -> float:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=120)
    switched_at: list[float] = []
    first_baseline: list[float] = []

    async def send() -> None:
        while not first_baseline:
            raw = await client.completions.with_raw_response.create(
                model=DEPLOYMENT, prompt="Hello", max_tokens=1, temperature=0
            )
            if raw.headers.get("x-steerlab-variant") == "baseline" and switched_at:
                first_baseline.append(time.perf_counter())

    async def throw() -> None:
        await asyncio.sleep(0.5)
        switched_at.append(time.perf_counter())
        await asyncio.to_thread(switch)

    try:
        await asyncio.gather(throw(), *(send() for _ in range(senders)))
    finally:
        await client.close()
    return first_baseline[0] - switched_at[0]


def format_serve_benchmark(figures: dict[str, Any]) -> str:
    lines = [
        f"steerlab bench serve on {figures['machine']['device']} {figures['machine']['gpu']}".rstrip()
        + f" ({figures['settings']['new_tokens']} new tokens per request, "
        f"{figures['settings']['rounds']} request per client at once, best of {figures['settings']['repeats']} "
        "interleaved runs)",
        "",
        f"{'model':<24}{'clients':>8}  {'scenario':<12}{'tok/s':>9}{'vs plain':>10}"
        f"{'1st tok p50/p95 ms':>22}{'per tok p50/p95 ms':>22}",
    ]
    for label, model in figures["models"].items():
        for key, run in model["runs"].items():
            clients, scenario = key.split("/")
            ratio = f"{run['vs_unsteered']:.3f}" if "vs_unsteered" in run else "1"
            lines.append(
                f"{label:<24}{clients:>8}  {scenario:<12}{run['tokens_per_second']:>9.0f}{ratio:>10}"
                f"{run['first_token_ms_p50']:>11.0f}/{run['first_token_ms_p95']:<10.0f}"
                f"{run['per_token_ms_p50']:>11.1f}/{run['per_token_ms_p95']:<10.1f}"
            )
        for clients, generate in model["generate"].items():
            lines.append(
                f"{label:<24}{clients:>8}  {'generate':<12}{generate['tokens_per_second']:>9.0f}"
                f"{'':>10}  server unsteered / generate = {generate['server_vs_generate']:.2f}"
            )
        kill = model["kill_switch"]
        lines.append(
            f"{label:<24}kill switch (store, poll {kill['poll_ms']:.0f} ms): first baseline response after "
            f"{kill['store_ms']:.0f} ms"
        )
    lines += ["", "targets: " + "; ".join(f"{k} {v}" for k, v in figures["targets"].items())]
    return "\n".join(lines)
