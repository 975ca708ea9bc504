"""Votes in and out (service.votes_io), against real stores with a real model's outputs.

Every import is checked in the store itself (plain SQL here, not the code under test): what
was stored, and that a refused file left every stored vote as it was. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text

from db import repository as repo
from db.store import Store
from engine.errors import SteerLabError
from service import audit
from service.access import AccessDenied, Identity, grant
from service.catalog import get_experiment
from service.cli import main
from service.rating import next_item, record_vote
from service.running import RunOptions, run_experiment_file
from service.votes_io import COLUMNS, export_votes, import_votes, vote_format
from tests.conftest import MOOD_FILE, needs_models
from tests.postgres import copy_store_url, new_store_url

pytestmark = [needs_models, pytest.mark.both_stores]

ORIGINAL, COPY = "tinystories_mood", "mood_copy"
HOSTILE_RATER = '=HYPERLINK("http://x","y")'  # a spreadsheet would run it as a formula
# Stored votes as the database holds them: (rater, kind, choice, time, left variant, right variant,
# prompt index, sample, repeat), in vote order.
VOTES_SQL = """
SELECT r.rater, r.rater_kind, r.choice, r.created_at, lv.name, rv.name, p.position, lg.sample_index, r.repeat
FROM ratings r
JOIN experiments e ON e.id = r.experiment_id
JOIN generations lg ON lg.id = r.left_generation_id
JOIN generations rg ON rg.id = r.right_generation_id
JOIN variants lv ON lv.id = lg.variant_id
JOIN variants rv ON rv.id = rg.variant_id
JOIN prompts p ON p.id = lg.prompt_id
WHERE e.name = :name ORDER BY r.id
"""


def stored_votes(db: str, name: str) -> list[tuple[Any, ...]]:
    """The votes of experiment ``name`` in the store at URL ``db``; times as SQLite writes them."""
    store = Store(db)
    try:
        with store.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(text(VOTES_SQL), {"name": name})]
    finally:
        store.close()
    return [(*r[:3], _as_sqlite_writes(r[3]), *r[4:]) for r in rows]


def _as_sqlite_writes(when: Any) -> Any:
    """PostgreSQL gives a time with its offset; SQLite the text of the UTC time, which the tests compare."""
    if isinstance(when, datetime):
        return when.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return when


def output_ids(db: str, name: str) -> dict[tuple[str, int, int], int]:
    """(variant, prompt index, sample) -> output id."""
    store = Store(db)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT v.name, p.position, g.sample_index, g.id FROM generations g "
                    "JOIN variants v ON v.id = g.variant_id JOIN prompts p ON p.id = g.prompt_id "
                    "JOIN experiments e ON e.id = g.experiment_id WHERE e.name = :name"
                ),
                {"name": name},
            ).all()
    finally:
        store.close()
    return {(v, p, s): g for v, p, s, g in rows}


def voted(backend: str, folder: Path, request: pytest.FixtureRequest) -> str:
    """Two runs of one definition (the original and a copy: the same outputs under other ids),
    and votes in the original: people through the Rate queue, a judge, a repeat, a hostile name."""
    data = yaml.safe_load(MOOD_FILE.read_text())
    data["generation"].update(samples_per_prompt=2, max_new_tokens=6)
    data["prompts"] = data["prompts"][:2]
    data["variants"] = data["variants"][:3]
    path = folder / "mood.yaml"
    path.write_text(yaml.safe_dump(data))
    db = new_store_url(backend, folder, request)
    store = Store(db)
    run_experiment_file(store, path, RunOptions(device="cpu"))
    run_experiment_file(store, path, RunOptions(device="cpu", name=COPY))
    ids = output_ids(db, ORIGINAL)
    for rater, choice in (("ann", "left"), ("bob", "tie"), ("ann", "both_bad"), ("bob", "right"), ("ann", "right")):
        item = next_item(store, ORIGINAL, rater)
        assert item is not None
        record_vote(store, ORIGINAL, rater, item.left_id, item.right_id, choice)
    with store.session() as session:
        experiment = get_experiment(session, ORIGINAL)
        when = datetime(2025, 3, 1, 14, 5, 0, 250000, tzinfo=UTC)
        left, right = ids[("baseline", 1, 1)], ids[(data["variants"][1]["name"], 1, 1)]
        repo.add_ratings(
            session,
            experiment.id,
            [
                repo.NewRating("judge:tone", left, right, "left", rater_kind="judge", created_at=when),
                repo.NewRating("carol", left, right, "right", created_at=when),
                repo.NewRating("carol", right, left, "right", repeat=1, created_at=when),  # sides re-drawn
                repo.NewRating(HOSTILE_RATER, right, left, "tie", created_at=when),
                repo.NewRating("'quoted", right, left, "left", created_at=when),
            ],
        )
    store.close()
    return db


@pytest.fixture(scope="module")
def voted_sqlite(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    return voted("sqlite", tmp_path_factory.mktemp("votes_io"), request)


@pytest.fixture(scope="module")
def voted_postgresql(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    return voted("postgresql", tmp_path_factory.mktemp("votes_io"), request)


@pytest.fixture
def db(store_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The URL of this test's own copy of the voted store."""
    return copy_store_url(request.getfixturevalue(f"voted_{store_backend}"), tmp_path, request)


def without_ids(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(rows, key=repr)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_export_imports_into_a_copy_as_the_same_votes_and_a_second_import_stores_nothing(db: str, fmt: str) -> None:
    store = Store(db)
    original = stored_votes(db, ORIGINAL)
    assert len(original) == 10 and stored_votes(db, COPY) == []
    text = export_votes(store, ORIGINAL, fmt)
    result = import_votes(store, COPY, text.encode(), f"votes.{fmt}")
    assert (result.imported, result.already_stored) == (10, 0)
    assert set(result.raters) == {"ann", "bob", "judge:tone", "carol", HOSTILE_RATER, "'quoted"}
    # The same votes, sides, kinds, repeats and times (to the microsecond, in UTC), on the copy's own outputs.
    assert stored_votes(db, COPY) == original
    again = import_votes(store, COPY, text.encode(), f"votes.{fmt}")
    assert (again.imported, again.already_stored) == (0, 10)
    assert stored_votes(db, COPY) == original
    assert "10 were stored already and skipped" in again.describe()
    # Back into the original itself: everything is there already.
    assert import_votes(store, ORIGINAL, text.encode(), f"votes.{fmt}").imported == 0
    assert stored_votes(db, ORIGINAL) == original


def test_the_csv_export_is_spreadsheet_safe_and_names_both_keys_and_ids(db: str) -> None:
    store = Store(db)
    rows = list(csv.DictReader(io.StringIO(export_votes(store, ORIGINAL, "csv"))))
    assert tuple(rows[0]) == COLUMNS
    hostile = next(r for r in rows if "HYPERLINK" in r["rater"])
    assert hostile["rater"] == "'" + HOSTILE_RATER, "a formula is shown as text"
    assert any(r["rater"] == "''quoted" for r in rows), "a leading apostrophe is doubled, so the import is exact"
    ids = output_ids(db, ORIGINAL)
    for row in rows:
        key = (int(row["prompt_index"]), int(row["sample"]))
        assert ids[(row["left_variant"], *key)] == int(row["left_id"])
        assert ids[(row["right_variant"], *key)] == int(row["right_id"])
    judged = next(r for r in rows if r["rater"] == "judge:tone")
    assert (judged["rater_kind"], judged["time"]) == ("judge", "2025-03-01T14:05:00.250000+00:00")
    assert [r["repeat"] for r in rows if r["rater"] == "carol"] == ["0", "1"]
    lines = [json.loads(line) for line in export_votes(store, ORIGINAL, "jsonl").splitlines()]
    assert [line["rater"] for line in lines] == [r[0] for r in stored_votes(db, ORIGINAL)]
    assert HOSTILE_RATER in {line["rater"] for line in lines}, "JSONL is not for spreadsheets: names as they are"


def test_votes_from_another_tool_by_ids_or_keys_with_times_in_any_offset(db: str) -> None:
    store = Store(db)
    ids = output_ids(db, COPY)
    text = (
        "rater,choice,time,left_id,right_id\n"
        f"dora,left,2025-03-01T15:00:00+01:00,{ids[('baseline', 0, 0)]},{ids[('sad_x1', 0, 0)]}\n"
        f"dora,tie,2025-03-01T14:30:00,{ids[('sad_x1', 1, 0)]},{ids[('baseline', 1, 0)]}\n"
        f"erik,right,,{ids[('baseline', 0, 1)]},{ids[('sad_x1', 0, 1)]}\n"
    )
    before = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    assert import_votes(store, COPY, text.encode(), "other_tool.csv").imported == 3
    jsonl = '{"rater": "fred", "choice": "both_bad", "left_variant": "sad_x1", "right_variant": "baseline", "prompt_index": 1, "sample": 1, "rater_kind": "human", "repeat": 0}\n'
    assert import_votes(store, COPY, jsonl.encode(), "other_tool.jsonl").imported == 1
    votes = stored_votes(db, COPY)
    assert [v[:3] for v in votes] == [
        ("dora", "human", "left"),
        ("dora", "human", "tie"),
        ("erik", "human", "right"),
        ("fred", "human", "both_bad"),
    ]
    assert votes[0][3] == "2025-03-01 14:00:00.000000", "converted to UTC"
    assert votes[1][3] == "2025-03-01 14:30:00.000000", "a time without an offset is UTC"
    assert votes[2][3] >= before[:19], "no time: the time of the import"
    assert votes[1][4:8] == ("sad_x1", "baseline", 1, 0) and votes[3][4:8] == ("sad_x1", "baseline", 1, 1)


def _good_csv(db: str) -> list[str]:
    ids = output_ids(db, COPY)
    return [
        "rater,choice,time,left_variant,right_variant,prompt_index,sample,left_id,right_id,repeat,rater_kind",
        "gina,left,2025-03-01T10:00:00+00:00,baseline,sad_x1,0,0,,,0,human",
        f"gina,right,2025-03-01T10:01:00+00:00,,,,,{ids[('baseline', 1, 0)]},{ids[('sad_x1', 1, 0)]},0,human",
    ]


# (what is wrong, the change to the good file's lines, words the one sentence holds)
BAD_FILES: dict[str, tuple[Callable[[list[str], dict[tuple[str, int, int], int]], list[str]], str]] = {
    "unknown generation": (
        lambda lines, ids: [*lines, "hal,left,,,,,,999999,999998,0,human"],
        "line 4: has left_id 999999, which is not an output of experiment 'mood_copy'",
    ),
    "output of another experiment": (
        lambda lines, ids: [*lines, f"hal,left,,,,,,{min(ids.values()) - 1},{min(ids.values())},0,human"],
        "which is not an output of experiment 'mood_copy'",
    ),
    "two prompts": (
        lambda lines, ids: [*lines, f"hal,left,,,,,,{ids[('baseline', 0, 0)]},{ids[('sad_x1', 1, 0)]},0,human"],
        "line 4: pairs output",
    ),
    "one variant twice": (
        lambda lines, ids: [*lines, f"hal,left,,,,,,{ids[('baseline', 0, 0)]},{ids[('baseline', 0, 0)]},0,human"],
        "pairs two outputs of the variant 'baseline'",
    ),
    "unknown choice": (
        lambda lines, ids: [*lines, "hal,maybe,,baseline,sad_x1,0,0,,,0,human"],
        "has the choice 'maybe'",
    ),
    "bad time": (
        lambda lines, ids: [*lines, "hal,left,yesterday,baseline,sad_x1,0,0,,,0,human"],
        "has the time 'yesterday', which is not an ISO 8601 time",
    ),
    "unknown variant": (
        lambda lines, ids: [*lines, "hal,left,,baseline,sad_x9,0,0,,,0,human"],
        "names the variant 'sad_x9', which experiment 'mood_copy' does not have",
    ),
    "prompt out of range": (
        lambda lines, ids: [*lines, "hal,left,,baseline,sad_x1,2,0,,,0,human"],
        "has prompt_index 2, but the experiment's 2 prompts are numbered 0 to 1",
    ),
    "sample not generated": (
        lambda lines, ids: [*lines, "hal,left,,baseline,sad_x1,0,2,,,0,human"],
        "for prompt_index 0, sample 2, which experiment 'mood_copy' does not have (yet)",
    ),
    "a key missing": (lambda lines, ids: [*lines, "hal,left,,baseline,sad_x1,0,,,,0,human"], "has no sample"),
    "no outputs named": (lambda lines, ids: [*lines, "hal,left,,,,,,,,0,human"], "names neither the outputs' keys"),
    "no rater": (lambda lines, ids: [*lines, ",left,,baseline,sad_x1,0,0,,,0,human"], "line 4: has no rater"),
    "unknown kind": (lambda lines, ids: [*lines, "hal,left,,baseline,sad_x1,0,0,,,0,robot"], "rater_kind 'robot'"),
    "a third showing": (lambda lines, ids: [*lines, "hal,left,,baseline,sad_x1,0,0,,,2,human"], "has repeat 2"),
    "repeat without a first vote": (
        lambda lines, ids: [*lines, "hal,left,,baseline,sad_x1,0,0,,,1,human"],
        "is a repeat (repeat 1) of a pair rater 'hal' has no first vote on",
    ),
    "the same vote twice in the file": (
        lambda lines, ids: [*lines, "gina,right,,sad_x1,baseline,0,0,,,0,human"],
        "line 4: repeats the vote of line 2",
    ),
    "a rater of two kinds": (
        lambda lines, ids: [*lines, "gina,left,,baseline,sad_x1,1,1,,,0,judge"],
        "gives rater 'gina' the kind 'judge'; judges' raters are named 'judge:<judge>'",
    ),
    "contradicts a stored vote": (
        lambda lines, ids: [*lines, "ivy,right,,baseline,sad_x1,0,0,,,0,human"],
        "where rater 'ivy' has a stored vote on the same pair (outputs",
    ),
    "a kind other than the stored one": (
        lambda lines, ids: [*lines, "ivy,left,,baseline,sad_x1,1,1,,,0,judge"],
        "gives rater 'ivy' the kind 'judge'",
    ),
    "a person named like a judge": (
        lambda lines, ids: [*lines, "judge:tone,left,,baseline,sad_x1,1,1,,,0,human"],
        "gives rater 'judge:tone' the kind 'human'",
    ),
    "unknown column": (
        lambda lines, ids: [lines[0] + ",note", *[line + ",x" for line in lines[1:]]],
        "line 1: has the unknown column 'note'",
    ),
    "a column twice": (
        lambda lines, ids: [lines[0] + ",rater", *[line + ",x" for line in lines[1:]]],
        "names the column 'rater' twice",
    ),
    "a short row": (lambda lines, ids: [*lines, "hal,left"], "line 4: has 2 fields where the header has 11"),
    "only a header": (lambda lines, ids: lines[:1], "holds no votes"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES), ids=sorted(BAD_FILES))
def test_a_bad_line_stops_the_whole_import_in_one_sentence_and_keeps_every_stored_vote(db: str, case: str) -> None:
    store = Store(db)
    ids = output_ids(db, COPY)
    with store.session() as session:  # a stored vote the file may contradict
        experiment = get_experiment(session, COPY)
        repo.add_rating(session, experiment.id, "ivy", ids[("baseline", 0, 0)], ids[("sad_x1", 0, 0)], "left")
    before = {name: stored_votes(db, name) for name in (ORIGINAL, COPY)}
    change, words = BAD_FILES[case]
    text = "\n".join(change(_good_csv(db), ids)) + "\n"
    with pytest.raises(SteerLabError) as refused:
        import_votes(store, COPY, text.encode(), "bad.csv")
    message = str(refused.value)
    assert words in message
    assert message.startswith("Votes file 'bad.csv'") and "\n" not in message and message.endswith(".")
    assert message.count(". ") == 0, "one sentence"
    assert {name: stored_votes(db, name) for name in (ORIGINAL, COPY)} == before
    assert not any(e.action == "imported votes" for e in audit.recent(store, COPY))


def test_files_that_are_not_vote_files_are_refused(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(db)
    good = ("\n".join(_good_csv(db)) + "\n").encode()
    cases = {
        "not UTF-8": (b"rater,choice\n\xff\xfe,left\n", "votes.csv", "is not UTF-8 text"),
        "not JSON": (
            b'{"rater": "x", "choice": "left", "left_variant": "baseline", "right_variant": "sad_x1", '
            b'"prompt_index": 0, "sample": 0}\n\n{oops\n',
            "votes.jsonl",
            "line 3: is not valid JSON",
        ),
        "not an object": (b"[1, 2]\n", "votes.jsonl", "line 1: is not a JSON object"),
        "a JSON number as text": (
            b'{"rater": "x", "choice": "left", "left_variant": "baseline", "right_variant": "sad_x1", "prompt_index": "0", "sample": 0.5}\n',
            "votes.jsonl",
            "has the sample '0.5', not a whole number from 0",
        ),
        "a spreadsheet": (good, "votes.xlsx", "ends in 'xlsx'"),
    }
    for content, name, words in cases.values():
        with pytest.raises(SteerLabError, match=words.replace("(", r"\(")):
            import_votes(store, COPY, content, name)
    monkeypatch.setenv("STEERLAB_MAX_FILE_BYTES", "100")
    with pytest.raises(SteerLabError, match="over the limit of 100; use fewer, or ask the operator to raise"):
        import_votes(store, COPY, good, "votes.csv")
    assert stored_votes(db, COPY) == []
    assert vote_format("dir/Votes.JSONL") == "jsonl"


def test_only_analysts_and_owners_move_votes_and_every_move_is_logged(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(db)
    text = export_votes(store, ORIGINAL, "csv")
    import_votes(store, COPY, text.encode(), "votes.csv")
    events = audit.recent(store)
    assert any(e.action == "exported" and e.experiment == ORIGINAL and "10 votes as CSV" in e.detail for e in events)
    imported = next(e for e in events if e.action == "imported votes")
    assert imported.experiment == COPY and "Imported 10 votes of 6 raters from votes.csv" in imported.detail
    monkeypatch.setenv("STEERLAB_ADMINS", "boss@example.com")
    boss = Identity("boss@example.com", signed_in=True)
    grant(store, boss, COPY, "rita@example.com", "rater")
    grant(store, boss, COPY, "ali@example.com", "analyst")
    rita, ali = Identity("rita@example.com", signed_in=True), Identity("ali@example.com", signed_in=True)
    with pytest.raises(AccessDenied, match="needs the owner or analyst role, and you are a rater of it"):
        export_votes(store, COPY, "jsonl", rita)
    with pytest.raises(AccessDenied, match="Importing votes in experiment 'mood_copy' needs the owner or analyst"):
        import_votes(store, COPY, text.encode(), "votes.csv", rita)
    assert import_votes(store, COPY, text.encode(), "votes.csv", ali).already_stored == 10
    assert json.loads(export_votes(store, COPY, "jsonl", ali).splitlines()[0])["rater"] == "ann"


def test_the_command_line_exports_and_imports(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "votes.jsonl"
    assert main(["votes", "export", ORIGINAL, "--format", "jsonl", "-o", str(target), "--db", db]) == 0
    assert f"Wrote the votes of '{ORIGINAL}' as JSONL" in capsys.readouterr().out
    assert main(["votes", "import", COPY, str(target), "--db", db]) == 0
    assert "Imported 10 votes of 6 raters from votes.jsonl into 'mood_copy'." in capsys.readouterr().out
    assert stored_votes(db, COPY) == stored_votes(db, ORIGINAL)
    assert main(["votes", "export", COPY, "--db", db]) == 0  # CSV on standard output
    assert capsys.readouterr().out.startswith(",".join(COLUMNS))
    bad = tmp_path / "bad.csv"
    bad.write_text("rater,choice,left_id,right_id\nx,left,1,999999\n")
    assert main(["votes", "import", COPY, str(bad), "--db", db]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Votes file 'bad.csv', line 2:") and err.count("\n") == 1
    assert main(["votes", "import", COPY, str(tmp_path / "missing.csv"), "--db", db]) == 2
    assert "does not exist" in capsys.readouterr().err
