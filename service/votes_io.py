"""Votes in and out: CSV or JSONL files of pairwise votes, for other tools and for copies of an experiment.

A file holds one vote per row (CSV, with a header) or per line (JSONL, one object each):

- ``rater`` (required): who voted; ``rater_kind``: ``human`` (default) or ``judge``;
- ``choice`` (required): ``left``, ``right``, ``tie`` or ``both_bad`` (left and right as shown);
- ``time``: when, in ISO 8601 (``2025-03-01T14:05:00+00:00``; without an offset it is UTC;
  blank: the time of the import);
- the two outputs, left as shown, either by keys, ``left_variant``, ``right_variant``,
  ``prompt_index`` and ``sample`` (both counted from 0, as in the CSV and JSON exports), or
  by ``left_id`` and ``right_id`` (the outputs' ids in this store). Where a row has both, the
  keys decide: they hold in a copy of the experiment, whose outputs have other ids;
- ``repeat``: 0 (default), or 1 for a pair shown to the same rater a second time.

The export writes every column, so an export imports as it is, into the same experiment or
into a copy with the same variants, prompts and samples. Spreadsheet formulas are
neutralised in exported CSV cells (a leading apostrophe, see :func:`service.export.neutralise`),
and the import takes that apostrophe off again.

An import is all or nothing, in one transaction: the first bad row stops it with one
sentence naming the line, and nothing of the file is stored. A row that repeats a stored
vote (same rater, pair and showing, same verdict) is skipped and counted, so importing a
file twice stores its votes once; one that contradicts a stored vote is refused. Both
directions need the analyst role (the files name the variants behind every vote), and both
are written to the audit log.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any, NamedTuple, NoReturn

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db import repository as repo
from db.schema import CHOICES, JUDGE_RATER_PREFIX, RATER_KINDS, Experiment
from db.store import Store
from engine import limits
from engine.errors import SteerLabError
from engine.fields import middle, printable, short
from engine.statistics_spec import MAX_RATER_NAME_CHARS
from service import audit
from service.access import LOCAL, Identity, require
from service.catalog import get_experiment
from service.export import neutralise

VOTE_FORMATS = ("csv", "jsonl")
COLUMNS = (
    "rater",
    "rater_kind",
    "choice",
    "time",
    "left_variant",
    "right_variant",
    "prompt_index",
    "sample",
    "left_id",
    "right_id",
    "repeat",
)
KEY_COLUMNS = ("left_variant", "right_variant", "prompt_index", "sample")
ID_COLUMNS = ("left_id", "right_id")
_NOTHING_STORED = "nothing from the file was imported"


@dataclass(frozen=True)
class VoteImport:
    """What an import stored."""

    experiment: str
    source: str  # how the file was named (its name, for an upload)
    imported: int
    already_stored: int  # rows identical to a stored vote, skipped
    raters: tuple[str, ...]  # raters of the imported votes

    def describe(self) -> str:
        raters = f"{len(self.raters)} rater" + ("" if len(self.raters) == 1 else "s")
        skipped = (
            f"; {self.already_stored} {'was' if self.already_stored == 1 else 'were'} stored already and skipped"
            if self.already_stored
            else ""
        )
        return f"Imported {self.imported} votes of {raters} from {self.source} into '{self.experiment}'{skipped}."


class _Output(NamedTuple):
    variant: str
    prompt_index: int
    sample: int


class _Vote(NamedTuple):
    line: int
    rater: str
    kind: str
    left_id: int
    right_id: int
    choice: str
    time: datetime | None
    repeat: int

    @property
    def key(self) -> tuple[str, int, int, int]:
        """What the database keeps one vote of: rater, pair (either order) and showing."""
        return self.rater, min(self.left_id, self.right_id), max(self.left_id, self.right_id), self.repeat

    @property
    def verdict(self) -> str | int:
        """The vote whatever the sides: the winning output's id, or tie / both_bad."""
        return {"left": self.left_id, "right": self.right_id}.get(self.choice, self.choice)


def _verdict_words(vote: _Vote) -> str:
    """The vote whatever the sides it was shown on: "the win to output 271", "a tie", "both bad"."""
    verdict = vote.verdict
    if isinstance(verdict, int):
        return f"the win to output {verdict}"
    return "a tie" if verdict == "tie" else "'both bad'"


def vote_format(filename: str) -> str:
    """``csv`` or ``jsonl``, from a file name's ending."""
    suffix = PurePath(filename).suffix.lower().lstrip(".")
    if suffix not in VOTE_FORMATS:
        raise SteerLabError(
            f"Votes file '{_shown(filename)}' ends in '{short(printable(suffix), 20)}'; "
            f"give a .csv or .jsonl file (see `steerlab votes export` for the columns)."
        )
    return suffix


# --- export ---------------------------------------------------------------------------------


def export_votes(store: Store, name: str, fmt: str = "csv", who: Identity = LOCAL) -> str:
    """Every vote of the experiment as CSV or JSONL (the import's format), in vote order; logged."""
    if fmt not in VOTE_FORMATS:
        raise SteerLabError(f"Format '{short(printable(fmt), 20)}' is not one of {', '.join(VOTE_FORMATS)}; pick one.")
    require(store, who, name, "analyst", "downloading the votes")
    with store.session() as session:
        experiment = get_experiment(session, name)
        outputs = _outputs(session, experiment)
        records = [
            {
                "rater": r.rater,
                "rater_kind": r.rater_kind,
                "choice": r.choice,
                "time": _utc(r.created_at).isoformat(),
                "left_variant": r.left_variant,
                "right_variant": r.right_variant,
                "prompt_index": outputs[r.left_generation_id].prompt_index,
                "sample": outputs[r.left_generation_id].sample,
                "left_id": r.left_generation_id,
                "right_id": r.right_generation_id,
                "repeat": r.repeat,
            }
            for r in repo.rating_rows(session, experiment.id)
        ]
        audit.record(session, who.user, "exported", name, f"{len(records)} votes as {fmt.upper()}")
    if fmt == "jsonl":
        return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    writer.writerows([_cell(record[column]) for column in COLUMNS] for record in records)
    return out.getvalue()


def _cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: formulas neutralised, and a text that already
    begins with an apostrophe gets one more, so that the import's undoing is exact."""
    if isinstance(value, str) and value.startswith("'"):
        return "'" + value
    return neutralise(value)


def _uncell(text: str) -> str:
    rest = text[1:]
    if text.startswith("'") and (rest.startswith("'") or neutralise(rest) != rest):
        return rest
    return text


# --- import ---------------------------------------------------------------------------------


def import_votes(
    store: Store, name: str, content: bytes, filename: str, who: Identity = LOCAL, fmt: str | None = None
) -> VoteImport:
    """Store the votes of a CSV or JSONL file (format from ``fmt``, else from the file name), all or none."""
    fmt = fmt or vote_format(filename)
    if fmt not in VOTE_FORMATS:
        raise SteerLabError(f"Format '{short(printable(fmt), 20)}' is not one of {', '.join(VOTE_FORMATS)}; pick one.")
    source = f"Votes file '{_shown(filename)}'"
    require(store, who, name, "analyst", "importing votes")
    limits.check(limits.MAX_FILE_BYTES, len(content), source)
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SteerLabError(f"{source} is not UTF-8 text ({exc.reason}); save it as UTF-8.") from exc
    rows = _jsonl_rows(text, source) if fmt == "jsonl" else _csv_rows(text, source)
    try:
        with store.session() as session:
            experiment = get_experiment(session, name)
            votes = _checked_votes(session, experiment, rows, source)
            fresh, skipped = _new_votes(session, experiment.id, votes, source)
            repo.add_ratings(
                session,
                experiment.id,
                [repo.NewRating(v.rater, v.left_id, v.right_id, v.choice, v.repeat, v.kind, v.time) for v in fresh],
            )
            result = VoteImport(
                name, _shown(filename), len(fresh), skipped, tuple(dict.fromkeys(v.rater for v in fresh))
            )
            audit.record(session, who.user, "imported votes", name, result.describe())
    except IntegrityError as exc:  # a rater voted on one of the pairs while the file was read
        raise SteerLabError(
            f"{source}: a vote on one of its pairs was stored while the file was imported, so {_NOTHING_STORED}; "
            "import it again (votes already stored are skipped)."
        ) from exc
    return result


def _jsonl_rows(text: str, source: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for number, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            _fail(source, number, f"is not valid JSON ({exc.msg})", "write one JSON object per line")
        except RecursionError:
            _fail(source, number, "nests JSON too deeply", "write one flat JSON object per line")
        if not isinstance(item, dict):
            _fail(source, number, "is not a JSON object", 'write {"rater": ..., "choice": ..., ...} per line')
        _known_columns(item, source, number)
        yield number, {k: v for k, v in item.items() if v is not None}


def _csv_rows(text: str, source: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        first = next(rows, None)
        if first is None:
            return
        header = [h.strip().lower() for h in first]
        _known_columns(dict.fromkeys(header), source, 1)
        repeated = next((h for h in header if header.count(h) > 1), None)
        if repeated is not None:
            _fail(source, 1, f"names the column '{short(printable(repeated))}' twice", "keep one of them")
        for row in rows:
            number = rows.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                _fail(
                    source,
                    number,
                    f"has {len(row)} fields where the header has {len(header)}",
                    "quote texts with commas",
                )
            yield number, {h: _uncell(cell.strip()) for h, cell in zip(header, row, strict=True) if cell.strip()}
    except csv.Error as exc:
        _fail(source, rows.line_num, f"is not valid CSV ({exc})", "fix the quoting there")


def _known_columns(row: Mapping[str, Any], source: str, line: int) -> None:
    unknown = [str(k) for k in row if k not in COLUMNS]
    if unknown:
        _fail(source, line, f"has the unknown column '{short(printable(unknown[0]))}'", f"use {', '.join(COLUMNS)}")


def _checked_votes(
    session: Session, experiment: Experiment, rows: Iterator[tuple[int, Mapping[str, Any]]], source: str
) -> list[_Vote]:
    """Every row read and checked against the experiment's outputs; the first bad one stops all."""
    outputs = _outputs(session, experiment)
    by_key = {key: gid for gid, key in outputs.items()}
    variants = [v.name for v in experiment.variants]
    prompts = len(experiment.prompts)
    votes = []
    for line, row in rows:
        fail = _at(source, line)
        rater = _text(row, "rater", fail)
        if len(rater) > MAX_RATER_NAME_CHARS or not rater.isprintable():
            fail(f"names a rater of {len(rater)} characters or with control characters", "write the name on one line")
        kind = _choice(row.get("rater_kind", "human"), "rater_kind", RATER_KINDS, fail)
        if (kind == "judge") != rater.lower().startswith(JUDGE_RATER_PREFIX):
            # A judge's votes are stored as "judge:<name>" and no person may take such a name:
            # the two kinds must never be confused in the statistics.
            fail(
                f"gives rater '{short(rater, 80)}' the kind '{kind}'",
                f"judges' raters are named '{JUDGE_RATER_PREFIX}<judge>' with rater_kind judge, and people's "
                f"names do not start with '{JUDGE_RATER_PREFIX}'",
            )
        choice = _choice(_text(row, "choice", fail), "choice", CHOICES, fail)
        repeat = _whole(row.get("repeat", 0), "repeat", fail)
        if repeat not in (0, 1):
            fail(f"has repeat {repeat}", "give 0 for a first showing or 1 for a pair shown to the rater again")
        if any(column in row for column in KEY_COLUMNS):
            left, right = _by_keys(row, by_key, variants, prompts, experiment.name, fail)
        elif all(column in row for column in ID_COLUMNS):
            left, right = _by_ids(row, outputs, experiment.name, fail)
        else:
            fail(
                "names neither the outputs' keys nor their ids",
                "give left_variant, right_variant, prompt_index and sample, or left_id and right_id",
            )
        votes.append(_Vote(line, rater, kind, left, right, choice, _time(row.get("time"), fail), repeat))
    if not votes:
        raise SteerLabError(f"{source} holds no votes; add one vote per line after the header.")
    return votes


def _by_keys(
    row: Mapping[str, Any],
    by_key: Mapping[_Output, int],
    variants: list[str],
    prompts: int,
    experiment: str,
    fail: _Fail,
) -> tuple[int, int]:
    missing = [column for column in KEY_COLUMNS if column not in row]
    if missing:
        fail(
            f"has no {missing[0]}", "give left_variant, right_variant, prompt_index and sample, or left_id and right_id"
        )
    left_variant, right_variant = _text(row, "left_variant", fail), _text(row, "right_variant", fail)
    for variant in (left_variant, right_variant):
        if variant not in variants:
            fail(
                f"names the variant '{short(printable(variant))}', which experiment '{experiment}' does not have",
                f"use one of {short(', '.join(variants), 200)}",
            )
    if left_variant == right_variant:
        fail(f"names the variant '{left_variant}' on both sides", "a vote compares two different variants")
    prompt_index, sample = _whole(row["prompt_index"], "prompt_index", fail), _whole(row["sample"], "sample", fail)
    if not 0 <= prompt_index < prompts:
        fail(
            f"has prompt_index {prompt_index}, but the experiment's {prompts} prompts are numbered 0 to {prompts - 1}",
            "count prompts from 0, as the exports do",
        )
    ids = []
    for variant in (left_variant, right_variant):
        gid = by_key.get(_Output(variant, prompt_index, sample))
        if gid is None:
            fail(
                f"names the output of variant '{variant}' for prompt_index {prompt_index}, sample {sample}, "
                f"which experiment '{experiment}' does not have (yet)",
                "run the experiment first, or check the sample, counted from 0",
            )
        ids.append(gid)
    return ids[0], ids[1]


def _by_ids(row: Mapping[str, Any], outputs: Mapping[int, _Output], experiment: str, fail: _Fail) -> tuple[int, int]:
    left, right = _whole(row["left_id"], "left_id", fail), _whole(row["right_id"], "right_id", fail)
    for column, gid in (("left_id", left), ("right_id", right)):
        if gid not in outputs:
            fail(
                f"has {column} {gid}, which is not an output of experiment '{experiment}'",
                "name the outputs by left_variant, right_variant, prompt_index and sample instead, as ids differ between copies",
            )
    a, b = outputs[left], outputs[right]
    if (a.prompt_index, a.sample) != (b.prompt_index, b.sample):
        fail(
            f"pairs output {left} (prompt_index {a.prompt_index}, sample {a.sample}) with output {right} "
            f"(prompt_index {b.prompt_index}, sample {b.sample})",
            "a vote compares two variants' outputs for one prompt and sample",
        )
    if a.variant == b.variant:
        fail(f"pairs two outputs of the variant '{a.variant}'", "a vote compares two different variants")
    return left, right


def _new_votes(session: Session, experiment_id: int, votes: list[_Vote], source: str) -> tuple[list[_Vote], int]:
    """The votes not stored yet, and how many are stored already; refuses contradictions and duplicates."""
    stored: dict[tuple[str, int, int, int], _Vote] = {}
    kinds: dict[str, str] = {}
    for r in repo.rating_rows(session, experiment_id):
        vote = _Vote(0, r.rater, r.rater_kind, r.left_generation_id, r.right_generation_id, r.choice, None, r.repeat)
        stored[vote.key] = vote
        kinds.setdefault(r.rater, r.rater_kind)
    in_file: dict[tuple[str, int, int, int], _Vote] = {}
    for vote in votes:
        fail = _at(source, vote.line)
        kind = kinds.setdefault(vote.rater, vote.kind)
        if kind != vote.kind:
            fail(
                f"says rater '{short(printable(vote.rater))}' is a {vote.kind}, but their other votes are a {kind}'s",
                "give each rater one rater_kind",
            )
        earlier = in_file.get(vote.key)
        if earlier is not None:
            fail(
                f"repeats the vote of line {earlier.line} (same rater, pair and repeat)",
                "keep one of the two lines, or mark a second showing with repeat 1",
            )
        in_file[vote.key] = vote
        previous = stored.get(vote.key)
        if previous is not None and previous.verdict != vote.verdict:
            fail(
                f"gives {_verdict_words(vote)} where rater '{short(printable(vote.rater))}' has a stored vote on the "
                f"same pair (outputs {vote.key[1]} and {vote.key[2]}) that gives {_verdict_words(previous)}",
                "remove the line (a stored vote is never replaced)",
            )
    for vote in votes:
        first = (vote.rater, *vote.key[1:3], 0)
        if vote.repeat and first not in stored and first not in in_file:
            _at(source, vote.line)(
                f"is a repeat (repeat 1) of a pair rater '{short(printable(vote.rater))}' has no first vote on",
                "add the first vote with repeat 0, or set repeat to 0",
            )
    fresh = [v for v in votes if v.key not in stored]
    return fresh, len(votes) - len(fresh)


# --- reading one row's values ---------------------------------------------------------------


class _Fail:
    """Raises the one-sentence error of one line of the file."""

    def __init__(self, source: str, line: int) -> None:
        self.source, self.line = source, line

    def __call__(self, problem: str, fix: str) -> NoReturn:
        _fail(self.source, self.line, problem, fix)


def _at(source: str, line: int) -> _Fail:
    return _Fail(source, line)


def _fail(source: str, line: int, problem: str, fix: str) -> NoReturn:
    raise SteerLabError(f"{source}, line {line}: {middle(printable(problem), 240)}; {fix} ({_NOTHING_STORED}).")


def _text(row: Mapping[str, Any], column: str, fail: _Fail) -> str:
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        fail(f"has no {column}" if value is None else f"has a {column} that is not text", f"give the {column} as text")
    return str(value).strip()


def _choice(value: Any, column: str, allowed: tuple[str, ...], fail: _Fail) -> str:
    if value not in allowed:
        shown = short(printable(str(value))) if isinstance(value, (str, int, float)) else type(value).__name__
        fail(f"has the {column} '{shown}'", f"use one of {', '.join(allowed)}")
    return str(value)


def _whole(value: Any, column: str, fail: _Fail) -> int:
    if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        return int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    shown = short(printable(str(value))) if isinstance(value, (str, int, float)) else type(value).__name__
    fail(f"has the {column} '{shown}', not a whole number from 0", f"give {column} as 0, 1, 2, ...")


def _time(value: Any, fail: _Fail) -> datetime | None:
    """An ISO 8601 time in UTC (a time without an offset is UTC); None: not given (stored as now)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        shown = short(printable(str(value))) if isinstance(value, (str, int, float)) else type(value).__name__
        fail(f"has the time '{shown}', which is not an ISO 8601 time", "write it like 2025-03-01T14:05:00+00:00")
    return _utc(moment)


# --- helpers --------------------------------------------------------------------------------


def _outputs(session: Session, experiment: Experiment) -> dict[int, _Output]:
    """Every output's id -> (variant name, prompt index, sample), without texts."""
    variants = {v.position: v.name for v in experiment.variants}
    prompts = {p.id: p.position for p in experiment.prompts}
    return {
        gid: _Output(variants[position], prompts[prompt_id], sample)
        for gid, prompt_id, sample, position in repo.generation_keys(session, experiment.id)
    }


def _utc(moment: datetime) -> datetime:
    """The moment in UTC; a time without an offset (SQLite hands back naive times) is taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _shown(filename: str) -> str:
    return short(printable(PurePath(filename).name or filename), 80)
