"""What Compare and the report show: minimum votes, chart sizes, hidden all-zero charts, cross-run timings."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from itertools import combinations
from typing import Any

import pytest
import vl_convert
import yaml

from db.store import Store
from engine.ranking import MIN_DECISIVE_BATTLES
from engine.stats import MIN_DECISIVE_VOTES, Estimate, MeanEstimate
from service import charts
from service.adaptation import Constraints, MethodRow, adaptation_table, decide, unchecked_speed
from service.comparison import Comparison, Vote, compare, diff_html, from_votes
from service.summary import VariantSummary, variant_summaries
from tests.conftest import MOOD_FILE, needs_models

# --- votes without a store ----------------------------------------------------------------


def votes_between(pairs: list[tuple[str, str, str]], rater: str = "ann") -> list[Vote]:
    """Votes (left variant, right variant, choice), each on its own pair of generations."""
    return [Vote(rater, a, b, 2 * i, 2 * i + 1, choice) for i, (a, b, choice) in enumerate(pairs)]


def comparison(variants: list[str], votes: list[Vote], summaries: list[VariantSummary] | None = None) -> Comparison:
    return from_votes("exp", variants, variants[0], votes, summaries, bootstrap_rounds=100)


def many_votes(variants: list[str], per_pair: int) -> list[Vote]:
    """Every pair voted ``per_pair`` times, earlier variants winning two votes in three."""
    pairs = []
    for a, b in combinations(variants, 2):
        pairs += [(a, b, "left" if k % 3 else "right") for k in range(per_pair)]
    return votes_between(pairs)


def svg_size(chart: Any) -> tuple[float, float]:
    svg = vl_convert.vegalite_to_svg(chart.to_json())
    width, height = re.search(r'<svg[^>]*width="([\d.]+)"[^>]*height="([\d.]+)"', svg).groups()  # type: ignore[union-attr]
    return float(width), float(height)


def layer_fields(spec: dict[str, Any]) -> list[str]:
    """Fields drawn on x in a (concatenated, layered) spec: which measures are charted."""
    found = []
    for key in ("layer", "hconcat", "vconcat"):
        for part in spec.get(key, []):
            found += layer_fields(part)
    x = spec.get("encoding", {}).get("x", {})
    if "field" in x:
        found.append(x["field"])
    return found


def test_bradley_terry_from_one_vote_is_finite_and_labelled_needs_more_votes() -> None:
    c = comparison(["baseline", "steered"], votes_between([("steered", "baseline", "left")]))
    table = charts.bradley_terry_table(c)
    # The prior keeps one vote's ratings finite and modest (1145 and 855, engine.ranking's hand-checked case).
    assert table["rating [95% CI]"].tolist() == [
        f"1,145 (needs more votes: 1 of {MIN_DECISIVE_BATTLES} decisive battles)",
        f"855 (needs more votes: 1 of {MIN_DECISIVE_BATTLES} decisive battles)",
    ]
    assert table["decisive battles"].tolist() == [1, 1], "the count stays beside the label"
    frame = charts.bradley_terry_frame(c)
    assert frame["rating"].notna().all() and frame["low"].isna().all(), "a point to plot, no interval"
    assert charts.bradley_terry_chart(c) is not None
    note = charts.bradley_terry_note(c)
    assert note is not None and "needs more votes" in note
    # The win rate of one decisive vote is not a figure either.
    wins = charts.win_rate_table(c)
    assert wins.iloc[0, 1] == f"too few votes (n=1 decisive votes; needs {MIN_DECISIVE_VOTES})"
    assert charts.win_rate_frame(c)["win rate"].isna().all()
    assert "None" not in wins.to_string() and "nan" not in wins.to_string()


def test_bradley_terry_with_many_votes_shows_ratings_with_intervals() -> None:
    variants = ["baseline", "a", "b"]
    c = comparison(variants, many_votes(variants, per_pair=12))
    table = charts.bradley_terry_table(c)
    for text in table["rating [95% CI]"]:
        assert re.fullmatch(r"[\d,]+ \[[\d,]+, [\d,]+\]", text), text
    assert (table["decisive battles"] >= MIN_DECISIVE_BATTLES).all()
    chart = charts.bradley_terry_chart(c)
    assert chart is not None and charts.bradley_terry_note(c) is None
    assert charts.bradley_terry_frame(c)["rating"].notna().all()
    rates = charts.win_rate_table(c)
    assert all(re.fullmatch(r"\d+% \[\d+%, \d+%\]", t) for t in rates.iloc[:, 1]), rates


def test_a_variant_below_the_minimum_is_labelled_beside_the_others() -> None:
    variants = ["baseline", "a", "late"]
    votes = many_votes(["baseline", "a"], per_pair=15) + votes_between([("late", "a", "left")], rater="bob")
    c = comparison(variants, votes)
    frame = charts.bradley_terry_frame(c).set_index("variant")
    assert frame.loc["late", "label"] == f"needs more votes (1 of {MIN_DECISIVE_BATTLES} decisive battles)"
    assert math.isnan(frame.loc["late", "low"]) and not math.isnan(frame.loc["a", "low"])
    assert math.isfinite(frame.loc["late", "rating"])
    assert charts.bradley_terry_chart(c) is not None
    note = charts.bradley_terry_note(c)
    assert note is not None and note.startswith("1 of 3 variants")


def test_agreement_counts_shared_pairs() -> None:
    alone = comparison(["baseline", "a"], votes_between([("a", "baseline", "left")] * 3))
    assert alone.agreement.shared_pairs == 0 and alone.agreement.rated_pairs == 3
    assert "raters need overlapping pairs" in alone.agreement.describe()
    ann = votes_between([("a", "baseline", "left"), ("a", "baseline", "right")], rater="ann")
    bob = votes_between([("a", "baseline", "left"), ("a", "baseline", "left")], rater="bob")
    shared = comparison(["baseline", "a"], ann + bob)
    assert shared.agreement.shared_pairs == 2
    assert "on 2 shared pairs" in shared.agreement.describe()


def test_pairwise_matrix_grows_with_the_variants() -> None:
    sizes = {}
    for n in (3, 8, 12):
        variants = [f"variant_number_{i}" for i in range(n)]
        c = comparison(variants, many_votes(variants, per_pair=2))
        chart = charts.matrix_chart(c)
        spec = chart.to_dict()
        assert spec["height"] == {"step": 36} and spec["autosize"]["type"] == "pad"
        assert 44 <= spec["width"]["step"] <= 80
        for channel in ("x", "y"):
            axis = spec["layer"][0]["encoding"][channel]["axis"]
            assert axis["labelOverlap"] is False, "every variant keeps its label"
        sizes[n] = svg_size(chart)
    # (Three rows are shorter than the colour legend, which then sets the height.)
    assert sizes[8][1] >= 8 * 36 and sizes[12][1] - sizes[8][1] >= 4 * 36 - 1
    assert all(width <= 1100 for width, _ in sizes.values()), sizes


def test_interval_charts_keep_a_row_height_per_variant() -> None:
    for n in (2, 8):
        variants = ["baseline"] + [f"v{i}" for i in range(n - 1)]
        c = comparison(variants, many_votes(variants, per_pair=12))
        for chart in (charts.win_rate_chart(c), charts.bradley_terry_chart(c)):
            spec = chart.to_dict()  # type: ignore[union-attr]
            rows = n - 1 if "Win rate" in json.dumps(spec["title"]) else n
            assert spec["height"] == max(2, rows) * charts.ROW
            # Streamlit's default "fit" would squeeze the rows into what the axes leave over.
            assert spec["autosize"]["type"] == "fit-x"
            labels = [layer for layer in spec["layer"] if layer["mark"]["type"] == "text"]
            assert labels and all(
                layer["mark"]["baseline"] == "middle" and "dy" not in layer["mark"] for layer in labels
            )


def summary(name: str, kind: str = "steering", same_runs: bool | None = True, **figures: float) -> VariantSummary:
    base = {
        "steering_parameters": 128.0,
        "extraction_seconds": 0.02,
        "side_effect_kl": 0.1,
        "nudge_ms_per_row": 0.0,
        "reversibility_max_abs_logit_diff": 0.0,
        "toggle_ms": 0.005,
    }
    return VariantSummary(
        name, kind, 10, 480, 0.2, 2**20, {**base, **figures}, {}, frozenset({1}), same_runs_as_baseline=same_runs
    )


def test_all_zero_measures_are_hidden_and_named_in_one_caption() -> None:
    summaries = [summary("baseline", "baseline", steering_parameters=0.0, side_effect_kl=0.0), summary("a")]
    c = comparison(["baseline", "a"], [], summaries)
    assert charts.hidden_measures(c)[0] == ["nudging ms per row", "logit diff after removal"]
    drawn = layer_fields(charts.compute_chart(c).to_dict())  # type: ignore[union-attr]
    assert "tokens per second" in drawn and "nudging ms per row" not in drawn
    reversibility = layer_fields(charts.reversibility_chart(c).to_dict())  # type: ignore[union-attr]
    assert reversibility and set(reversibility) == {"toggle (ms)"}
    notes = [n for n in charts.compute_notes(c) + charts.reversibility_notes(c) if "All zero" in n]
    assert notes == [
        "All zero for every variant, so not drawn: nudging ms per row.",
        "All zero for every variant, so not drawn: logit diff after removal "
        "(0 means removing the edit restores the original model exactly).",
    ]
    # One variant that is not zero brings the chart back.
    nudged = comparison(["baseline", "a"], [], [summaries[0], summary("a", nudge_ms_per_row=3.5)])
    assert "nudging ms per row" in layer_fields(charts.compute_chart(nudged).to_dict())  # type: ignore[union-attr]
    assert not any("nudging" in n for n in charts.compute_notes(nudged))


def test_scores_wrap_into_panels_that_fit_the_page() -> None:
    scores = {f"scorer_{k}": MeanEstimate(0.1 * k, 0.05 * k, 0.15 * k, 10, 30) for k in range(1, 6)}
    summaries = [
        VariantSummary(f"variant_{i}", "steering", 10, 480, 0.2, 2**20, {}, scores, frozenset({1}), True)
        for i in range(8)
    ]
    c = comparison([s.name for s in summaries], [], summaries)
    chart = charts.scores_chart(c)
    assert chart is not None and chart.to_dict()["columns"] == 3
    width, _ = svg_size(chart)
    assert width <= 1100
    assert "scorer_1 (10 prompts per variant)" in json.dumps(chart.to_dict()["datasets"])
    table = charts.scores_table(c)
    assert table.loc[0, "scorer_1 [95% CI]"] == "0.10 [0.05, 0.15]"


def test_numbers_are_rounded_to_what_is_meaningful() -> None:
    assert charts.sig(5108.53) == "5,110" and charts.sig(0.001351) == "0.00135" and charts.sig(0.0) == "0"
    assert charts.sig(0.0100, trim=True) == "0.01" and charts.sig(math.nan) == "–"
    assert charts.interval_text(Estimate(15.001, 13.142, 16.435, 30)) == "15.0 [13.1, 16.4]"
    assert charts.interval_text(Estimate(0.02, 0.0113, 0.0291, 30)) == "0.020 [0.011, 0.029]"
    assert charts.interval_text(Estimate(0.62, 0.41, 0.79, 20), percent=True) == "62% [41%, 79%]"


def test_sweep_legend_uses_words() -> None:
    from engine.sweep import Cell, SweepConfig, pareto_front
    from service.sweeps import SweepResult

    cells = [Cell(layer, k, 0.01 * k, 0.0, 0.02 * k, 10.0 + 5 * k, 30) for layer in (0, 1) for k in (1, 2, 3)]
    front = pareto_front(cells)
    result = SweepResult("s", SweepConfig("sad", (1, 2, 3), "sad_words"), cells, 0.0, 10.0, front, front[0])
    spec = charts.pareto_chart(result).to_dict()
    points = next(layer for layer in spec["layer"] if "shape" in layer.get("encoding", {}))
    legends = {channel: points["encoding"][channel]["scale"]["domain"] for channel in ("color", "shape", "size")}
    assert legends["color"] == ["on the Pareto front", "not on the front"]
    assert legends["shape"] == legends["size"] == ["recommended", "not recommended"]
    assert "legend" not in points["encoding"]["size"], "size shares the shape's legend; hiding it hid both"
    rows = [row for rows in spec["datasets"].values() for row in rows if "cell" in row]
    assert {row["pick"] for row in rows} == {"recommended", "not recommended"}


def test_diff_shows_markup_literally_and_marks_changed_words() -> None:
    evil = "# Title\n**bold** [link](http://evil.example) <img src=x onerror=alert(1)> $x$ :red[hi]\n\nnext"
    left, right = diff_html(evil, evil.replace("**bold**", "plain") + " added")
    for snippet in (left, right):
        assert "<img" not in snippet and "](" not in snippet and "**" not in snippet and "$x$" not in snippet
        assert "<br><br>" in snippet, "line breaks are kept"
        assert set(re.findall(r"</?(\w+)", snippet)) <= {"mark", "br"}
    assert left.count('<mark class="removed">') == 1 and "&#42;&#42;bold&#42;&#42;" in left
    assert '<mark class="added">plain</mark>' in right and '<mark class="added">added</mark>' in right


def method_row(name: str, kind: str, performance: float, overhead: float, comparable: bool = True) -> MethodRow:
    return MethodRow(
        name, kind, 1, 2, True, 0.0, 0.1, overhead, 128, 512, 12, Estimate(performance, 0.0, 1.0, 30), None, comparable
    )


def test_decision_helper_does_not_judge_non_comparable_speed() -> None:
    rows = [
        method_row("baseline", "baseline", 0.1, 1.0),
        method_row("fast_elsewhere", "steering", 0.5, 0.17, comparable=False),  # "6x faster", on a quieter machine
        method_row("slow_elsewhere", "steering", 0.4, 9.0, comparable=False),
        method_row("measured", "steering", 0.3, 1.1),
        method_row("too_slow", "steering", 0.9, 3.0),
    ]
    budget = Constraints(max_inference_overhead=1.5)
    assert [r.variant for r in decide(rows, budget)] == ["fast_elsewhere", "slow_elsewhere", "measured"]
    assert [r.variant for r in unchecked_speed(rows, budget)] == ["fast_elsewhere", "slow_elsewhere"]
    assert unchecked_speed(rows, Constraints()) == []
    shown = charts.adaptation_frame(rows).set_index("variant")["inference time vs baseline"]
    assert shown["fast_elsewhere"] == "0.17× (different run: not comparable)" and shown["measured"] == "1.10×"


# --- a store with a variant added later, run on its own -----------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    from service.rating import next_item, record_vote
    from service.running import RunOptions, run_experiment_file

    folder = tmp_path_factory.mktemp("two_runs")
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=1, max_new_tokens=8)
    data["prompts"] = data["prompts"][:2]
    data["variants"] = data["variants"][:3]
    path = folder / "mood.yaml"
    path.write_text(yaml.safe_dump(data))
    store = Store(str(folder / "runs.db"))
    assert run_experiment_file(store, path, RunOptions(device="cpu")).status == "done"
    data["variants"].append(
        {
            "name": "added_later",
            "interventions": [{"method": "add", "vector": "sad", "layers": [1], "coefficient": 1.0}],
        }
    )
    path.write_text(yaml.safe_dump(data))
    second = run_experiment_file(store, path, RunOptions(device="cpu"))
    assert (second.status, second.generated) == ("done", 2), "only the new variant's outputs are generated"
    for _ in range(3):
        item = next_item(store, "tinystories_mood", "ann")
        assert item is not None
        record_vote(store, "tinystories_mood", "ann", item.left_id, item.right_id, "left")
    yield store
    store.close()


@needs_models
def test_variant_generated_in_another_run_is_flagged(two_runs: Store) -> None:
    by_name = {s.name: s for s in variant_summaries(two_runs, "tinystories_mood", bootstrap_rounds=50)}
    first_run = by_name["baseline"].run_ids
    assert len(first_run) == 1 and by_name["sad_x1"].run_ids == first_run
    assert by_name["added_later"].run_ids.isdisjoint(first_run)
    assert by_name["baseline"].same_runs_as_baseline is True and by_name["sad_x1"].same_runs_as_baseline is True
    assert by_name["added_later"].same_runs_as_baseline is False and not by_name["added_later"].timing_comparable

    c = compare(two_runs, "tinystories_mood", bootstrap_rounds=50)
    table = charts.compute_table(c).set_index("variant")
    assert table.loc["added_later", "timed with the baseline"] == "no: different run, not comparable"
    assert table.loc["added_later", "tokens per second"].endswith("(not comparable)")
    assert table.loc["sad_x1", "timed with the baseline"] == "yes"
    assert "(not comparable)" not in table.loc["sad_x1", "tokens per second"]
    assert any(charts.NOT_COMPARABLE in line and "added_later" in line for line in charts.compute_notes(c))
    assert charts.NOT_COMPARABLE in json.dumps(charts.compute_chart(c).to_dict()["title"])  # type: ignore[union-attr]

    rows = {r.variant: r for r in adaptation_table(two_runs, "tinystories_mood", "sad_words", rounds=50)}
    assert not rows["added_later"].speed_comparable and rows["sad_x1"].speed_comparable
    strict = Constraints(max_inference_overhead=1e-9)  # a budget nothing measured here can meet
    assert [r.variant for r in decide(list(rows.values()), strict)] == ["added_later"]
    assert [r.variant for r in unchecked_speed(list(rows.values()), strict)] == ["added_later"]


@needs_models
def test_report_shows_too_few_votes_and_the_other_run(two_runs: Store) -> None:
    from service.report import html_report

    report = html_report(two_runs, "tinystories_mood", bootstrap_rounds=50)
    assert "3 blind pairwise votes" in report
    assert "needs more votes" in report
    assert re.search(rf"needs more votes: \d of {MIN_DECISIVE_BATTLES} decisive battles", report)
    assert "too few votes (n=" in report and "None" not in report
    assert "<h2>Verdicts</h2>" in report and "keep rating" in report
    assert "no: different run, not comparable" in report and charts.NOT_COMPARABLE in report
    assert "none of the" in report and "raters need overlapping pairs" in report


@needs_models
def test_compare_page_shows_labels_flags_and_shared_pairs(two_runs: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    monkeypatch.setenv("STEERLAB_DB", two_runs.url.removeprefix("sqlite:///"))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/compare.py")
    at.run()
    assert not at.exception, at.exception
    captions = " ".join(str(c.value) for c in at.caption)
    assert "0 shared pairs (rated by two or more raters) of 3 rated pairs" in captions
    assert "overlapping pairs" in captions
    assert "too few votes" in captions
    assert "not comparable" in captions
    assert "added\\_later" in captions, "variant names in captions go through md()"
    frames = [d.value for d in at.dataframe]
    assert any(
        "rating [95% CI]" in f.columns and f["rating [95% CI]"].str.contains("needs more votes|no votes yet").all()
        for f in frames
    )
    verdicts = next(f for f in frames if "verdict" in f.columns)
    assert (
        set(verdicts["verdict"]) <= {"keep rating", "add prompts"}
        and verdicts["n"].str.contains("decisive vote").any()  # "1 decisive vote" or "N decisive votes"
    )
    assert any("timed with the baseline" in f.columns for f in frames)
