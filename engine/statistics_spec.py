"""The ``statistics`` section of an experiment: how Compare decides between variants.

Every field is optional; an experiment file without the section (and a definition stored
before the section existed) gets the defaults. The section decides how outputs are
*judged*, never what they are, so it is left out of the definition hash: changing it keeps
every stored output and vote.

    statistics:
      alpha: 0.05                 # false-positive rate of each family of comparisons
      power: 0.8                  # chance of detecting the effects below when they are real
      correction: holm            # or benjamini_hochberg
      win_rate: 0.6               # smallest win rate over the baseline worth detecting
      score_differences: {sad_words: 0.05}
      min_votes: 10               # decisive battles before a rating loses "needs more votes"
      length_control: true        # also show ratings with output length factored out
      repeat_share: 0.05          # share of a rater's pairs shown again, for self-consistency
      exclude_raters: [mallory]   # left out of every statistic (their votes stay stored)

This module is torch-free, like :mod:`engine.spec`, which reads the section through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, model_validator

from engine.declaration import FLAG, Check, Settings, choice, where_of, whole
from engine.fields import Where, as_float, as_list, as_mapping, as_str, printable, short

CORRECTIONS = ("holm", "benjamini_hochberg")
# Scores every run measures besides the experiment's scorers (service.provenance.FLUENCY:
# perplexity under the unsteered model); a smallest difference may be given for them too.
MEASURED_SCORES = ("fluency_ppl",)
LOWER_IS_BETTER_ALWAYS = ("fluency_ppl",)  # perplexity: lower is more fluent, whatever the experiment
# As long as a stored rater name may be (db.schema.Rating.rater).
MAX_RATER_NAME_CHARS = 200
# Defaults, named so that other modules and the docs quote the same numbers.
DEFAULT_ALPHA = 0.05
DEFAULT_POWER = 0.8
DEFAULT_WIN_RATE = 0.6
DEFAULT_MIN_VOTES = 10  # engine.ranking.MIN_DECISIVE_BATTLES
DEFAULT_REPEAT_SHARE = 0.05


@dataclass(frozen=True)
class StatisticsSpec:
    """The validated ``statistics`` section (see the module docstring for each field)."""

    alpha: float = DEFAULT_ALPHA
    power: float = DEFAULT_POWER
    correction: str = "holm"
    win_rate: float = DEFAULT_WIN_RATE
    score_differences: Mapping[str, float] = field(default_factory=dict)  # scorer name -> smallest difference
    min_votes: int = DEFAULT_MIN_VOTES
    length_control: bool = True
    repeat_share: float = DEFAULT_REPEAT_SHARE
    exclude_raters: tuple[str, ...] = ()
    # Scores whose decrease is the goal (a "happy words" share when steering towards sadness);
    # fluency_ppl (perplexity) is always one. Every other score: higher is better.
    lower_is_better: tuple[str, ...] = ()

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        """Plain data: only what differs from the defaults (what a stored definition keeps, so that
        definitions without the section stay as they were), or every field with ``full``."""
        default = StatisticsSpec()
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if full or value != getattr(default, f.name):
                out[f.name] = (
                    dict(value) if isinstance(value, Mapping) else list(value) if isinstance(value, tuple) else value
                )
        return out

    def difference_for(self, scorer: str) -> float | None:
        """The smallest difference worth detecting in ``scorer``'s scores; None: not given."""
        return self.score_differences.get(scorer)

    def for_scores(self, kept: set[str]) -> StatisticsSpec:
        """This section for an experiment derived with only the scores ``kept`` (and the measured ones):
        entries naming the others are dropped, as they would be refused there."""
        known = kept | set(MEASURED_SCORES)
        return replace(
            self,
            score_differences={k: v for k, v in self.score_differences.items() if k in known},
            lower_is_better=tuple(name for name in self.lower_is_better if name in known),
        )

    def higher_is_better(self, score: str) -> bool:
        """Whether a higher ``score`` is what the team wants (verdicts say "better" for a rise)."""
        return score not in self.lower_is_better and score not in LOWER_IS_BETTER_ALWAYS

    def excludes(self, rater: str) -> bool:
        return rater in self.exclude_raters


def _between(low: float, high: float, example: str, low_included: bool = False, high_included: bool = False) -> Check:
    """A number in a range, refused in one sentence that names the range and a usual value."""

    def read(value: Any, where: Where) -> float:
        number = as_float(value, where)
        above_low = number >= low if low_included else number > low
        below_high = number <= high if high_included else number < high
        if not (above_low and below_high):
            strictly = "" if low_included and high_included else "strictly "
            where.fail(
                f"is {number:g}, which is not {strictly}between {low:g} and {high:g}", f"give a value like {example}"
            )
        return number

    schema: dict[str, Any] = {"type": "number"}
    schema["minimum" if low_included else "exclusiveMinimum"] = low
    schema["maximum" if high_included else "exclusiveMaximum"] = high
    return Check(read, schema, "float")


def _differences(value: Any, where: Where) -> dict[str, float]:
    data = as_mapping({} if value is None else value, where)
    out: dict[str, float] = {}
    for name, difference in data.items():
        here = where.child(str(name))
        if not isinstance(name, str) or not name.strip():
            here.fail("is not a scorer name", "name one of the experiment's scorers")
        number = as_float(difference, here)
        if number <= 0:
            here.fail(
                f"is {number:g}, not a positive difference", "give the smallest difference worth detecting, like 0.05"
            )
        out[name] = number
    return out


def _rater_names(value: Any, where: Where) -> tuple[str, ...]:
    names: list[str] = []
    for i, item in enumerate(as_list([] if value is None else value, where)):
        here = where.child(i)
        name = as_str(item, here).strip()
        if len(name) > MAX_RATER_NAME_CHARS:
            here.fail(
                f"is {len(name)} characters long", f"use the rater's name as stored (at most {MAX_RATER_NAME_CHARS})"
            )
        if any(ch in name for ch in "\t\r\n"):
            here.fail("holds a tab or line break", "write the rater's name on one line")
        if name not in names:  # a name listed twice leaves the rater out once
            names.append(name)
    return tuple(names)


def _score_names(value: Any, where: Where) -> tuple[str, ...]:
    names: list[str] = []
    for i, item in enumerate(as_list([] if value is None else value, where)):
        name = as_str(item, where.child(i)).strip()
        if name not in names:
            names.append(name)
    return tuple(names)


_SCORES_SCHEMA = {"type": "array", "items": {"type": "string", "minLength": 1}}
_DIFFERENCES_SCHEMA = {"type": "object", "additionalProperties": {"type": "number", "exclusiveMinimum": 0}}
_RATERS_SCHEMA = {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": MAX_RATER_NAME_CHARS}}


class StatisticsSettings(Settings):
    """The ``statistics`` section: how Compare tests, corrects and labels its comparisons."""

    alpha: Annotated[float, _between(0.0, 0.5, "0.05")] = Field(
        DEFAULT_ALPHA,
        description="False-positive rate of each family of comparisons (two-sided), after the correction.",
    )
    power: Annotated[float, _between(0.5, 1.0, "0.8")] = Field(
        DEFAULT_POWER,
        description="Chance of detecting an effect of the sizes below when it is real: sets the votes or prompts "
        "needed before 'no detectable difference' is said.",
    )
    correction: Annotated[str, choice(CORRECTIONS)] = Field(
        "holm",
        description="How comparisons (variants x metrics) are corrected for being looked at together: holm "
        "(family-wise error) or benjamini_hochberg (false discovery rate).",
    )
    # From 0.51: closer to 50% would take tens of thousands of decisive votes (engine.power).
    win_rate: Annotated[float, _between(0.51, 1.0, "0.6", low_included=True)] = Field(
        DEFAULT_WIN_RATE,
        description="The smallest win rate over the baseline (decisive votes) worth detecting.",
    )
    score_differences: Annotated[dict[str, float], Check(_differences, _DIFFERENCES_SCHEMA, "text")] = Field(
        default_factory=dict,
        description="Scorer name -> the smallest difference from the baseline worth detecting in its mean score "
        "(default: half the baseline's spread between prompts).",
    )
    min_votes: Annotated[int, whole(1, 100_000)] = Field(
        DEFAULT_MIN_VOTES,
        description="Decisive battles a variant needs before its rating is shown without 'needs more votes'.",
    )
    length_control: Annotated[bool, FLAG] = Field(
        True, description="Also show ratings with the outputs' length difference factored out (raters favour length)."
    )
    repeat_share: Annotated[float, _between(0.0, 0.5, "0.05", low_included=True, high_included=True)] = Field(
        DEFAULT_REPEAT_SHARE,
        description="Share of each rater's pairs shown to them again later (sides re-drawn) to measure their "
        "self-consistency; 0 turns repeats off.",
    )
    exclude_raters: Annotated[tuple[str, ...], Check(_rater_names, _RATERS_SCHEMA, "texts")] = Field(
        (),
        description="Raters left out of every statistic (their votes stay stored); analysts switch this on Compare.",
    )

    lower_is_better: Annotated[tuple[str, ...], Check(_score_names, _SCORES_SCHEMA, "texts")] = Field(
        (),
        description="Scores whose decrease is the goal (e.g. a 'happy words' share when steering towards "
        "sadness): verdicts call a drop 'better'. fluency_ppl is always lower-is-better; other scores: higher.",
    )

    @model_validator(mode="after")
    def _known_scorers(self, info: ValidationInfo) -> StatisticsSettings:
        known: tuple[str, ...] = tuple((info.context or {}).get("scorer_names", ())) + MEASURED_SCORES
        for field_name, names in (("score_differences", list(self.score_differences)), ("lower_is_better", None)):
            where = where_of(info).child(field_name)
            for i, name in enumerate(names if names is not None else self.lower_is_better):
                if name not in known:
                    (where.child(name) if names is not None else where.child(i)).fail(
                        f"names {short(printable(name))!r}, which is not a scorer of the experiment",
                        f"use one of {', '.join(known)}",
                    )
        return self

    def to_spec(self) -> StatisticsSpec:
        return StatisticsSpec(
            alpha=self.alpha,
            power=self.power,
            correction=self.correction,
            win_rate=self.win_rate,
            score_differences=dict(self.score_differences),
            min_votes=self.min_votes,
            length_control=self.length_control,
            repeat_share=self.repeat_share,
            exclude_raters=self.exclude_raters,
            lower_is_better=self.lower_is_better,
        )


def parse_statistics(raw: Any, where: Where, scorer_names: tuple[str, ...] = ()) -> StatisticsSpec:
    """Validate a ``statistics`` section (None or missing: the defaults); ``scorer_names`` are the
    experiment's scorers, which ``score_differences`` may name."""
    return StatisticsSettings.checked({} if raw is None else raw, where, {"scorer_names": scorer_names}).to_spec()
