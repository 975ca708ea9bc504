"""``steerlab bench store``: how fast the store and the pages are at team scale.

It builds, in a temporary SQLite store, the issue's team-scale experiment (20 variants x
100 prompts x 5 samples = 10,000 generations of a few hundred characters, two scores
each, and 50,000 votes from 20 raters) through the project's own repository and rating
functions, then times what a team does with it: draw the next pair to rate, record a
vote, read rating progress (each a median over many calls), the Experiments table,
Compare's whole computation with 1,000 bootstrap rounds (cold, then warm: nothing
changed since the last view), the HTML report (time and size), the CSV and JSON exports,
and every dashboard page rendered through Streamlit's AppTest (warm: the second run).

``size="quick"`` builds a small store (2 variants x 10 prompts x 2 samples, 20 votes...)
so a test can check that every figure is produced; its timings mean nothing.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db import repository as repo
from db import runs
from db.store import Store
from engine.fields import Where
from engine.spec import parse_experiment
from service import charts
from service.catalog import import_experiment, list_experiments
from service.comparison import clear_caches, drill_rows, drill_texts
from service.export import export_csv, export_json
from service.rating import next_item, progress, record_vote
from service.report import html_report

logger = logging.getLogger(__name__)

EXPERIMENT = "team_scale"
MODEL = "raincandy-u/TinyStories-656K"
ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard" / "app.py"
PAGES = ("experiments", "variants", "run", "playground", "sweep", "rate", "compare", "adaptation", "report")

# (figure, target, how the figure is compared with it)
TARGETS: tuple[tuple[str, float, str], ...] = (
    ("rate_next_pair_ms", 50.0, "ms"),
    ("record_vote_ms", 50.0, "ms"),
    ("rating_progress_ms", 50.0, "ms"),
    ("experiments_table_s", 1.0, "s"),
    ("compare_cold_s", 5.0, "s"),
    ("compare_warm_s", 0.5, "s"),
    ("html_report_s", 10.0, "s"),
    ("html_report_mb", 20.0, "MB"),
    ("export_csv_s", 10.0, "s"),
    ("export_json_s", 10.0, "s"),
    *((f"page_{page}_warm_s", 1.0, "s") for page in PAGES),
)


@dataclass(frozen=True)
class Size:
    variants: int
    prompts: int
    samples: int
    raters: int
    votes: int
    repeats: int  # calls per median
    bootstrap_rounds: int


SIZES = {
    "full": Size(variants=20, prompts=100, samples=5, raters=20, votes=50_000, repeats=50, bootstrap_rounds=1000),
    "quick": Size(variants=2, prompts=10, samples=2, raters=4, votes=20, repeats=3, bootstrap_rounds=50),
}

_TEXT = (
    "the little girl saw a big red ball in the park and she ran to get it her mom said "
    "be careful but the dog was faster he jumped and barked they all laughed together then "
    "it started to rain so everyone went home sad tired happy sun tree bird sky friend toy"
)
_WORDS = _TEXT.split()


def run_store_benchmark(size: str = "full", log: Callable[[str], None] = lambda _line: None) -> dict[str, Any]:
    """Build the store of ``size`` ("full" or "quick") in a temporary folder and time every step."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    shape = SIZES[size]
    figures: dict[str, Any] = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "settings": {
            "size": size,
            "variants": shape.variants,
            "prompts": shape.prompts,
            "samples": shape.samples,
            "generations": shape.variants * shape.prompts * shape.samples,
            "raters": shape.raters,
            "votes": shape.votes,
            "repeats": shape.repeats,
            "bootstrap_rounds": shape.bootstrap_rounds,
        },
    }
    with tempfile.TemporaryDirectory(prefix="steerlab-bench-store-") as folder:
        path = Path(folder) / "bench.db"
        store = Store(str(path))
        try:
            started = time.perf_counter()
            log(f"building {figures['settings']['generations']} generations and {shape.votes} votes ...")
            build_store(store, shape)
            figures["build_s"] = time.perf_counter() - started
            figures["store_mb"] = _store_bytes(path) / 1e6
            log(f"built in {figures['build_s']:.1f} s ({figures['store_mb']:.1f} MB)")
            _time_rating(store, shape, figures, log)
            _time_pages_of_service(store, shape, figures, log)
            _time_dashboard(path, figures, log)
        finally:
            store.close()
    figures["targets"] = {name: f"< {target:g} {unit}" for name, target, unit in TARGETS}
    figures["met"] = {name: _met(figures.get(name), target) for name, target, _ in TARGETS}
    return figures


def format_store_benchmark(figures: dict[str, Any]) -> str:
    """A text table: each figure, its target and whether it is met."""
    s = figures["settings"]
    lines = [
        f"store benchmark ({s['size']}): {s['variants']} variants x {s['prompts']} prompts x {s['samples']} samples "
        f"= {s['generations']} generations, {s['votes']} votes from {s['raters']} raters; "
        f"built in {figures.get('build_s', float('nan')):.1f} s",
        f"{'step':<28} {'figure':>10}  {'target':<10} met",
        f"{'-' * 28} {'-' * 10}  {'-' * 10} ---",
    ]
    for name, target, unit in TARGETS:
        value = figures.get(name)
        shown = "–" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"
        met = figures.get("met", {}).get(name)
        lines.append(f"{name:<28} {shown:>10}  {'< ' + format(target, 'g') + ' ' + unit:<10} {_yes(met)}")
    return "\n".join(lines)


# --- building the store -------------------------------------------------------------------


def build_store(store: Store, shape: Size) -> None:
    """The experiment, its generations, scores and votes, through the repository functions."""
    rng = random.Random(0)
    raw = {
        "name": EXPERIMENT,
        "model": MODEL,
        "description": "Team-scale benchmark store.",
        "prompts": [f"Story {i}: once upon a time, there was a child who" for i in range(shape.prompts)],
        "generation": {"max_new_tokens": 96, "do_sample": True, "samples_per_prompt": shape.samples, "seed": 1},
        "variants": [{"name": "baseline"}]
        + [{"name": f"prompt_{i:02d}", "prefix": f"Style {i}. "} for i in range(1, shape.variants)],
        "scorers": [
            {"name": "sad_words", "kind": "words", "words": ["sad", "cry"]},
            {"name": "happy_words", "kind": "words", "words": ["happy", "laughed"]},
        ],
    }
    spec = parse_experiment(raw, Where("benchmark experiment"))
    with store.session() as session:
        experiment = import_experiment(session, spec, "benchmark", {})
        experiment_id = experiment.id
        variant_ids = [v.id for v in experiment.variants]
        prompt_ids = [p.id for p in experiment.prompts]
        total = shape.variants * shape.prompts * shape.samples
        run_id = runs.start_run(
            session, experiment, total, 0, shape.variants * shape.samples, "cpu", "float32", "bench"
        ).id
    by_row: dict[tuple[int, int], list[int]] = {}
    for prompt_id in prompt_ids:
        rows = [
            repo.NewGeneration(v, prompt_id, s, _text(rng), rng.randint(60, 96), rng.uniform(0.01, 0.05), 2**28)
            for s in range(shape.samples)
            for v in variant_ids
        ]
        with store.session() as session:
            ids = repo.record_batch(session, experiment_id, run_id, rows)
            repo.set_generation_metrics(
                session,
                [(gid, name, rng.random() * 0.05) for gid in ids for name in ("sad_words", "happy_words")],
            )
        for row, gid in zip(rows, ids, strict=True):
            by_row.setdefault((row.prompt_id, row.sample_index), []).append(gid)
    with store.session() as session:
        runs.finish_run(session, run_id, "done")
        for variant_id in variant_ids:
            repo.set_variant_metrics(session, variant_id, run_id, {"side_effect_kl": rng.random(), "toggle_ms": 0.01})
    _add_votes(store, experiment_id, list(by_row.values()), variant_ids, shape, rng)


def _add_votes(
    store: Store, experiment_id: int, rows: list[list[int]], variant_ids: list[int], shape: Size, rng: random.Random
) -> None:
    """Votes that follow a hidden quality per variant; a fifth of each rater's pairs are shared ones."""
    quality = {i: rng.gauss(0, 1) for i in range(len(variant_ids))}
    per_rater = shape.votes // shape.raters
    shared_pool = [_pair(rows, rng) for _ in range(max(1, per_rater // 5))]
    for r in range(shape.raters):
        rater = f"rater_{r:02d}"
        chosen: dict[tuple[int, int], tuple[int, int]] = {}
        for left, right in shared_pool[: per_rater // 5]:
            chosen[(min(left, right), max(left, right))] = (left, right)
        while len(chosen) < per_rater:
            left, right = _pair(rows, rng)
            chosen.setdefault((min(left, right), max(left, right)), (left, right))
        votes = []
        for (left, right), (a, b) in zip(chosen.values(), _positions(rows, chosen.values()), strict=True):
            gap = quality[a] - quality[b] + 0.1  # a little position bias, as people have
            roll = rng.random()
            choice = (
                "tie"
                if roll < 0.1
                else "both_bad"
                if roll < 0.15
                else "left"
                if rng.random() < 1 / (1 + 10 ** (-gap))
                else "right"
            )
            votes.append(repo.NewRating(rater, left, right, choice))
        with store.session() as session:
            repo.add_ratings(session, experiment_id, votes)


def _pair(rows: list[list[int]], rng: random.Random) -> tuple[int, int]:
    row = rng.choice(rows)
    left, right = rng.sample(row, 2)
    return left, right


def _positions(rows: list[list[int]], pairs: Any) -> Iterator[tuple[int, int]]:
    """The variant positions of each (left, right) pair (generation ids are stored in variant order per row)."""
    where = {gid: i for row in rows for i, gid in enumerate(row)}
    for left, right in pairs:
        yield where[left], where[right]


def _text(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(50, 110))]
    return " " + " ".join(words).capitalize() + "."


def _store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


# --- timing ---------------------------------------------------------------------------------


def _median_ms(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _seconds(call: Callable[[], object]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def _time_rating(store: Store, shape: Size, figures: dict[str, Any], log: Callable[[str], None]) -> None:
    rng = random.Random(1)
    figures["rate_next_pair_ms"] = _median_ms(lambda: next_item(store, EXPERIMENT, "rater_00", rng), shape.repeats)
    log(f"next pair: {figures['rate_next_pair_ms']:.1f} ms")

    def vote() -> None:
        item = next_item(store, EXPERIMENT, "newcomer", rng)
        assert item is not None
        started = time.perf_counter()
        choice = rng.choice(("left", "right", "tie"))
        record_vote(store, EXPERIMENT, "newcomer", item.left_id, item.right_id, choice, repeat=item.repeat)
        vote_times.append((time.perf_counter() - started) * 1000)

    vote_times: list[float] = []
    for _ in range(shape.repeats):
        vote()
    figures["record_vote_ms"] = statistics.median(vote_times)
    log(f"record vote: {figures['record_vote_ms']:.1f} ms")
    figures["rating_progress_ms"] = _median_ms(lambda: progress(store, EXPERIMENT, "rater_00"), shape.repeats)
    log(f"progress: {figures['rating_progress_ms']:.1f} ms")


def _compare_page(store: Store, rounds: int) -> None:
    """What the Compare page computes: the comparison, its charts and tables, the drill-down's list and one row."""
    charts.compare_view(store, EXPERIMENT, rounds)
    rows = drill_rows(store, EXPERIMENT)
    if rows:
        drill_texts(store, EXPERIMENT, rows[0].prompt_index, rows[0].sample)


def _time_pages_of_service(store: Store, shape: Size, figures: dict[str, Any], log: Callable[[str], None]) -> None:
    figures["experiments_table_s"], _ = _seconds(lambda: list_experiments(store))
    clear_caches()
    figures["compare_cold_s"], _ = _seconds(lambda: _compare_page(store, shape.bootstrap_rounds))
    log(f"compare cold: {figures['compare_cold_s']:.2f} s")
    figures["compare_warm_s"], _ = _seconds(lambda: _compare_page(store, shape.bootstrap_rounds))
    log(f"compare warm: {figures['compare_warm_s']:.3f} s")
    clear_caches()
    figures["html_report_s"], report = _seconds(lambda: html_report(store, EXPERIMENT, shape.bootstrap_rounds))
    figures["html_report_mb"] = len(report.encode()) / 1e6
    log(f"HTML report: {figures['html_report_s']:.2f} s, {figures['html_report_mb']:.2f} MB")
    figures["export_csv_s"], csv_text = _seconds(lambda: export_csv(store, EXPERIMENT))
    figures["export_csv_mb"] = len(csv_text.encode()) / 1e6
    figures["export_json_s"], json_text = _seconds(lambda: export_json(store, EXPERIMENT))
    figures["export_json_mb"] = len(json_text.encode()) / 1e6
    log(f"exports: CSV {figures['export_csv_s']:.2f} s, JSON {figures['export_json_s']:.2f} s")


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _time_dashboard(path: Path, figures: dict[str, Any], log: Callable[[str], None]) -> None:
    """Each page through AppTest, twice: the second (warm) run is the figure, the first is kept too."""
    from streamlit.testing.v1 import AppTest  # only here: importing Streamlit is slow

    with _environment(STEERLAB_DB=str(path)):
        for page in PAGES:
            at = AppTest.from_file(str(APP), default_timeout=600)
            at.query_params["experiment"] = EXPERIMENT
            at.query_params["rater"] = "rater_01"
            at.run()
            if page != "experiments":
                at.switch_page(f"views/{page}.py")
            first, _ = _seconds(at.run)
            warm, _ = _seconds(at.run)
            figures[f"page_{page}_cold_s"] = first
            figures[f"page_{page}_warm_s"] = warm
            if at.exception:
                figures[f"page_{page}_error"] = str(at.exception[0].value)[:300]
            log(f"page {page}: {first:.2f} s, warm {warm:.2f} s")


def _met(value: Any, target: float) -> bool | None:
    return None if value is None else bool(value < target)


def _yes(met: bool | None) -> str:
    return "–" if met is None else "yes" if met else "NO"
