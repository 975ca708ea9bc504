"""The ``statistics`` section (engine.statistics_spec) and leaving a rater out (service.rater_settings).

The section is read like every other one: one sentence naming the field for a bad value,
the JSON Schema refusing what the parser refuses, defaults for definitions stored before it,
and no effect on the definition hash. Leaving a rater out is checked in a real SQLite store.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from sqlalchemy import text

from db import repository as repo
from db import runs
from db.store import Store
from engine.errors import SteerLabError
from engine.experiment_file import parse_experiment_text
from engine.fields import Where
from engine.spec import parse_experiment
from engine.spec_schema import experiment_json_schema
from engine.statistics_spec import MEASURED_SCORES, StatisticsSpec
from service import audit
from service.access import AccessDenied, Identity, grant
from service.catalog import get_experiment, import_experiment
from service.provenance import FLUENCY
from service.rater_settings import excluded_raters, set_rater_excluded, statistics_of

BASE: dict[str, Any] = {
    "name": "stats",
    "model": "m",
    "prompts": ["Once", "Then"],
    "variants": [{"name": "baseline"}, {"name": "polite", "prefix": "Please. "}],
    "scorers": [{"name": "sad_words", "kind": "words", "words": ["sad"]}],
}
FULL = {
    "alpha": 0.01,
    "power": 0.9,
    "correction": "benjamini_hochberg",
    "win_rate": 0.55,
    "score_differences": {"sad_words": 0.05, "fluency_ppl": 2.5},
    "min_votes": 20,
    "length_control": False,
    "repeat_share": 0.1,
    "exclude_raters": ["mallory", "judge:tone"],
    "lower_is_better": ["sad_words"],
}


def parsed(statistics: Any = None, **top: Any) -> Any:
    raw = {**BASE, **top} if statistics is None else {**BASE, **top, "statistics": statistics}
    return parse_experiment(raw, Where("stats.yaml"))


def test_without_the_section_the_defaults_apply_and_nothing_is_stored() -> None:
    spec = parsed()
    assert spec.statistics == StatisticsSpec()
    assert (spec.statistics.alpha, spec.statistics.power, spec.statistics.correction) == (0.05, 0.8, "holm")
    assert (spec.statistics.win_rate, spec.statistics.min_votes, spec.statistics.repeat_share) == (0.6, 10, 0.05)
    assert spec.statistics.length_control and spec.statistics.exclude_raters == ()
    assert "statistics" not in spec.to_dict(), "definitions stored before the section stay as they were"
    assert (
        parsed({}).statistics == StatisticsSpec()
        and parse_experiment_text(
            "name: s\nmodel: m\nprompts: [a]\nvariants: [{name: b}]\nstatistics:\n", "s.yaml", None
        ).statistics
        == StatisticsSpec()
    ), "an empty section is the defaults"


def test_every_field_round_trips_and_none_changes_the_definition_hash() -> None:
    spec = parsed(FULL)
    stats = spec.statistics
    assert stats.score_differences == {"sad_words": 0.05, "fluency_ppl": 2.5}
    assert stats.difference_for("sad_words") == 0.05 and stats.difference_for("happy") is None
    assert stats.exclude_raters == ("mallory", "judge:tone") and stats.excludes("mallory")
    assert spec.to_dict()["statistics"] == FULL
    assert parse_experiment(spec.to_dict(), Where("stored")) == spec
    assert spec.definition_hash() == parsed().definition_hash(), "how outputs are judged, not what they are"
    assert StatisticsSpec().to_dict() == {}
    assert StatisticsSpec().to_dict(full=True) == {
        "alpha": 0.05,
        "power": 0.8,
        "correction": "holm",
        "win_rate": 0.6,
        "score_differences": {},
        "min_votes": 10,
        "length_control": True,
        "repeat_share": 0.05,
        "exclude_raters": [],
        "lower_is_better": [],
    }
    assert not stats.higher_is_better("sad_words") and not stats.higher_is_better(FLUENCY)
    assert StatisticsSpec().higher_is_better("sad_words") and not StatisticsSpec().higher_is_better(FLUENCY)
    assert parsed({"alpha": 0.01}).to_dict()["statistics"] == {"alpha": 0.01}, "only what differs is stored"
    assert parsed({"exclude_raters": [" ann ", "ann", "bob"]}).statistics.exclude_raters == ("ann", "bob")
    assert MEASURED_SCORES == (FLUENCY,), "every run's fluency score may have a smallest difference too"


# (the section, the field the sentence names, words of the sentence)
BAD = {
    "alpha above 0.5": (
        {"alpha": 2},
        "statistics.alpha",
        "is 2, which is not strictly between 0 and 0.5; give a value like 0.05",
    ),
    "alpha zero": ({"alpha": 0}, "statistics.alpha", "is 0, which is not strictly between 0 and 0.5"),
    "alpha as text": ({"alpha": "5%"}, "statistics.alpha", "expected a number, got the text '5%'"),
    "power at 1": ({"power": 1.0}, "statistics.power", "is 1, which is not strictly between 0.5 and 1"),
    "power low": ({"power": 0.3}, "statistics.power", "give a value like 0.8"),
    "unknown correction": (
        {"correction": "bonferroni"},
        "statistics.correction",
        "use one of holm, benjamini_hochberg",
    ),
    "lower is better names no scorer": (
        {"lower_is_better": ["happy_words"]},
        "statistics.lower_is_better[0]",
        "names 'happy_words', which is not a scorer of the experiment; use one of sad_words, fluency_ppl",
    ),
    "win rate at a half": (
        {"win_rate": 0.5},
        "statistics.win_rate",
        "is 0.5, which is not strictly between 0.51 and 1",
    ),
    "win rate too close to a half": ({"win_rate": 0.505}, "statistics.win_rate", "between 0.51 and 1"),
    "not a scorer": (
        {"score_differences": {"happy_words": 0.1}},
        "statistics.score_differences.happy_words",
        "names 'happy_words', which is not a scorer of the experiment; use one of sad_words, fluency_ppl",
    ),
    "a negative difference": (
        {"score_differences": {"sad_words": -0.1}},
        "statistics.score_differences.sad_words",
        "is -0.1, not a positive difference",
    ),
    "differences as a list": (
        {"score_differences": ["sad_words"]},
        "statistics.score_differences",
        "expected a mapping",
    ),
    "no votes needed": ({"min_votes": 0}, "statistics.min_votes", "below the smallest allowed value 1"),
    "a fraction of a vote": ({"min_votes": 2.5}, "statistics.min_votes", "expected a whole number"),
    "length control as text": ({"length_control": "yes"}, "statistics.length_control", "expected true or false"),
    "every pair repeated": ({"repeat_share": 1}, "statistics.repeat_share", "is 1, which is not between 0 and 0.5"),
    "negative repeats": ({"repeat_share": -0.1}, "statistics.repeat_share", "is -0.1, which is not between 0 and 0.5"),
    "one rater as text": ({"exclude_raters": "mallory"}, "statistics.exclude_raters", "expected a list"),
    "an empty rater": ({"exclude_raters": ["ann", " "]}, "statistics.exclude_raters[1]", "is empty"),
    "a rater on two lines": ({"exclude_raters": ["a\nb"]}, "statistics.exclude_raters[0]", "holds a tab or line break"),
    "a long rater": ({"exclude_raters": ["x" * 201]}, "statistics.exclude_raters[0]", "is 201 characters long"),
    "an unknown field": ({"alpah": 0.01}, "statistics.alpah", "is not a known field; use one of alpha, power"),
    "a list": ([0.05], "statistics", "expected a mapping of fields"),
}


@pytest.mark.parametrize("case", sorted(BAD), ids=sorted(BAD))
def test_a_bad_value_is_one_sentence_naming_the_field(case: str) -> None:
    section, field, words = BAD[case]
    with pytest.raises(SteerLabError) as refused:
        parsed(section)
    message = str(refused.value)
    assert message.startswith(f"stats.yaml, field {field}: ") and words in message
    assert message.endswith(".") and "\n" not in message


SCHEMA_CANNOT_KNOW = {"not a scorer", "an empty rater", "a rater on two lines", "lower is better names no scorer"}


@pytest.mark.parametrize("case", sorted(set(BAD) - SCHEMA_CANNOT_KNOW))
def test_the_json_schema_refuses_what_the_parser_refuses(case: str) -> None:
    # The schema cannot know the experiment's scorers, and leaves names to the parser.
    validator = Draft202012Validator(experiment_json_schema())
    assert not list(validator.iter_errors({**BASE, "statistics": FULL}))
    assert list(validator.iter_errors({**BASE, "statistics": BAD[case][0]}))


def test_a_file_s_error_names_the_line() -> None:
    text = yaml.safe_dump({**BASE, "statistics": {"alpha": 0.05, "correction": "bonferroni"}}, sort_keys=False)
    line = next(i for i, t in enumerate(text.splitlines(), start=1) if "bonferroni" in t)
    with pytest.raises(SteerLabError, match=rf"stats.yaml, field statistics.correction \(line {line}\): "):
        parse_experiment_text(text, "stats.yaml", None)


# --- leaving a rater out, in a real store (SQLite and PostgreSQL) -------------------------------

pytestmark = pytest.mark.both_stores


@pytest.fixture
def voted(store: Store) -> Store:
    """The experiment with one output per (prompt, variant) and votes of ann, bob and a judge."""
    spec = parsed({"alpha": 0.01})
    with store.session() as session:
        experiment = import_experiment(session, spec, "stats.yaml", {})
        run = runs.start_run(session, experiment, 4, 0, 4, "cpu", "float32", "test")
        rows = [
            repo.NewGeneration(v.id, p.id, 0, f"{v.name} {p.text}", 3, 0.1, 0)
            for p in experiment.prompts
            for v in experiment.variants
        ]
        ids = repo.record_batch(session, experiment.id, run.id, rows)
        repo.add_ratings(
            session,
            experiment.id,
            [
                repo.NewRating("ann", ids[0], ids[1], "left"),
                repo.NewRating("bob", ids[1], ids[0], "tie"),
                repo.NewRating("judge:tone", ids[2], ids[3], "right", rater_kind="judge"),
            ],
        )
    return store


def stored(store: Store) -> tuple[dict[str, Any], str]:
    with store.engine.connect() as conn:
        spec_json, definition_hash = conn.execute(text("SELECT spec_json, definition_hash FROM experiments")).one()
    return json.loads(spec_json), definition_hash


def test_a_rater_left_out_is_stored_in_the_definition_and_logged(voted: Store) -> None:
    before, hash_before = stored(voted)
    assert statistics_of(voted, "stats").alpha == 0.01 and excluded_raters(voted, "stats") == ()
    assert set_rater_excluded(voted, "stats", " bob ", True) == ("bob",)
    assert set_rater_excluded(voted, "stats", "judge:tone", True) == ("bob", "judge:tone")
    after, hash_after = stored(voted)
    # Only the statistics section changed; the hash (what decides the outputs) did not.
    assert after["statistics"] == {"alpha": 0.01, "exclude_raters": ["bob", "judge:tone"]}
    assert {k: v for k, v in after.items() if k != "statistics"} == {
        k: v for k, v in before.items() if k != "statistics"
    }
    assert hash_after == hash_before
    # As another part of SteerLab reads it, straight from the stored JSON.
    assert after.get("statistics", {}).get("exclude_raters", []) == ["bob", "judge:tone"]
    assert excluded_raters(voted, "stats") == ("bob", "judge:tone")
    events = [e for e in audit.recent(voted, "stats") if e.action.startswith("rater")]
    assert [(e.action, e.detail) for e in events] == [
        ("rater left out", "rater 'judge:tone' left out of every statistic"),
        ("rater left out", "rater 'bob' left out of every statistic"),
    ]
    assert set_rater_excluded(voted, "stats", "bob", True) == ("bob", "judge:tone"), "already left out"
    assert len([e for e in audit.recent(voted, "stats") if e.action.startswith("rater")]) == 2, "no change, no event"
    assert set_rater_excluded(voted, "stats", "bob", False) == ("judge:tone",)
    assert set_rater_excluded(voted, "stats", "judge:tone", False) == ()
    assert stored(voted)[0]["statistics"] == {"alpha": 0.01}
    assert audit.recent(voted, "stats")[0].detail == "rater 'judge:tone' counted again"
    with voted.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ratings")).scalar() == 3, "votes stay stored"


def test_a_rater_without_votes_cannot_be_left_out(voted: Store) -> None:
    before = stored(voted)
    with pytest.raises(
        SteerLabError,
        match=r"Rater 'anne' has no votes in experiment 'stats' \(raters: ann, bob, judge:tone\); pick one of those\.",
    ):
        set_rater_excluded(voted, "stats", "anne", True)
    assert set_rater_excluded(voted, "stats", "anne", False) == (), "counting in someone never left out changes nothing"
    assert stored(voted) == before


def test_only_analysts_and_owners_leave_raters_out(voted: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERLAB_ADMINS", "boss@example.com")
    boss = Identity("boss@example.com", signed_in=True)
    grant(voted, boss, "stats", "rita@example.com", "rater")
    grant(voted, boss, "stats", "ali@example.com", "analyst")
    with pytest.raises(AccessDenied, match="needs the owner or analyst role, and you are a rater of it"):
        set_rater_excluded(voted, "stats", "ann", True, Identity("rita@example.com", signed_in=True))
    assert excluded_raters(voted, "stats") == ()
    assert set_rater_excluded(voted, "stats", "ann", True, Identity("ali@example.com", signed_in=True)) == ("ann",)
    assert audit.recent(voted, "stats")[0].actor == "ali@example.com"


def test_switches_at_the_same_time_are_all_kept(voted: Store) -> None:
    with voted.session() as session:  # more raters, so four analysts can switch four at once
        experiment = get_experiment(session, "stats")
        low, high = sorted(g for g, *_ in repo.generation_keys(session, experiment.id))[:2]
        repo.add_ratings(session, experiment.id, [repo.NewRating(f"r{i}", low, high, "left") for i in range(4)])
    barrier, errors = threading.Barrier(4), []

    def switch(rater: str) -> None:
        store = Store(voted.url)  # each its own connections, as two dashboard sessions have
        try:
            barrier.wait(timeout=60)
            set_rater_excluded(store, "stats", rater, True)
        except Exception as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=switch, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(excluded_raters(voted, "stats")) == ["r0", "r1", "r2", "r3"], "no switch lost"


def test_a_definition_swap_only_replaces_what_was_read(voted: Store) -> None:
    data, _ = stored(voted)
    with voted.session() as session:
        experiment = get_experiment(session, "stats")
        current = experiment.spec_json
        assert not repo.swap_experiment_spec(session, experiment.id, current + " ", {**data, "description": "x"})
    assert stored(voted)[0] == data
    with voted.session() as session:
        assert repo.swap_experiment_spec(session, experiment.id, current, {**data, "description": "x"})
    assert stored(voted)[0]["description"] == "x"
