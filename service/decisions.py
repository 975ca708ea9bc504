"""Verdicts a team can ship on: each variant against the baseline, on votes and on every score.

Families of comparisons, each corrected as a whole (Holm or Benjamini–Hochberg, the
experiment's ``statistics.correction``):

- **humans and scores**: every variant that is not the baseline (nor a null arm, which has
  its own figures, see :mod:`service.null_arms`) against the baseline on the people's
  decisive votes, and on each score paired over (prompt, sample) rows;
- **judges**: the same variants on each LLM judge's votes, apart, so adding a judge never
  changes the people's verdicts.

Each comparison carries its sample size, a one-look 95% interval, an always-valid interval
and p-value (raw and adjusted), how many decisive votes or prompts it needs for the
chosen power, and a plain verdict (see :mod:`engine.verdicts`). Two variants chosen on the
page are compared the same way, uncorrected (and labelled so).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.battles import Tally
from engine.multiplicity import CorrectionMethod
from engine.spec import ExperimentSpec
from engine.statistics_spec import StatisticsSpec
from engine.stats import FEW_PROMPTS, MIN_DECISIVE_VOTES, format_p_value, plural
from engine.verdicts import ScoreComparison, VoteComparison, compare_scores, compare_votes, correct
from service.provenance import FLUENCY

HUMAN_VOTES = "human votes"


def too_few(decisive: int) -> str:
    return f"too few votes (n={decisive} decisive; needs {MIN_DECISIVE_VOTES})"


def judge_metric(judge: str) -> str:
    """The metric name of one judge's votes: "votes of judge:NAME"."""
    return f"votes of {judge}"


@dataclass(frozen=True)
class Decision:
    """One comparison: ``variant`` against ``opponent`` on one metric (votes or a score)."""

    variant: str
    opponent: str
    metric: str  # HUMAN_VOTES, judge_metric(...), or a score's name
    votes: VoteComparison | None = None
    score: ScoreComparison | None = None

    @property
    def comparison(self) -> VoteComparison | ScoreComparison:
        found = self.votes if self.votes is not None else self.score
        assert found is not None
        return found

    @property
    def label(self) -> str:
        return self.comparison.verdict.label

    @property
    def sentence(self) -> str:
        return self.comparison.verdict.sentence

    def sample(self) -> str:
        """The sample size in words: decisive votes (with ties and both-bad apart), or prompts and pairs."""
        if self.votes is not None:
            return plural(self.votes.decisive, "decisive vote")
        assert self.score is not None
        return f"{plural(self.score.prompts, 'prompt')}, {plural(self.score.pairs, 'pair')}"

    def estimate(self) -> str:
        """The figure with its one-look 95% interval: a win rate, or a difference in score."""
        if self.votes is not None:
            e = self.votes.win_rate
            if e.n < MIN_DECISIVE_VOTES:  # as everywhere on Compare: 0% or 100% from one vote is no figure
                return too_few(e.n)
            return f"{e.value:.0%} [{e.low:.0%}, {e.high:.0%}]"
        assert self.score is not None
        d = self.score.difference
        return "–" if not d.prompts else f"{d.value:+.3g} [{d.low:+.3g}, {d.high:+.3g}]"

    def always_valid(self) -> str:
        """The always-valid 95% interval (a confidence sequence): safe to read after every vote."""
        s = self.comparison.sequential
        if not s.n:
            return "–"
        if not (math.isfinite(s.low) and math.isfinite(s.high)):
            return "unbounded yet"  # too few prompts for the always-valid test to bound anything
        if self.votes is not None:
            return f"[{s.low:.0%}, {s.high:.0%}]"
        return f"[{s.low:+.3g}, {s.high:+.3g}]"

    def needed(self) -> str:
        c = self.comparison
        needed = c.votes_needed if isinstance(c, VoteComparison) else c.prompts_needed
        unit = "decisive votes" if self.votes is not None else "prompts"
        return "unknown yet" if needed is None else f"{needed} {unit}"

    def to_data(self) -> dict[str, Any]:
        """Every figure, for the JSON export."""
        c = self.comparison
        s = c.sequential
        out: dict[str, Any] = {
            "variant": self.variant,
            "opponent": self.opponent,
            "metric": self.metric,
            "verdict": c.verdict.label,
            "sentence": c.verdict.sentence,
            "always_valid_ci95": [_num(s.low), _num(s.high)],
            "p_value": _num(c.p_value),
            "adjusted_p_value": _num(c.adjusted_p_value),
            "correction": c.correction,
            "family": c.family,
            "more_needed": c.verdict.more_needed,
        }
        if isinstance(c, VoteComparison):
            out |= {
                "wins": c.wins,
                "losses": c.losses,
                "decisive_votes": c.decisive,
                "win_rate": _num(c.win_rate.value),
                "ci95": [_num(c.win_rate.low), _num(c.win_rate.high)],
                "win_rate_to_detect": c.win_rate_effect,
                "decisive_votes_needed": c.votes_needed,
                "decisive_votes_needed_single_look": c.fixed_votes_needed,
            }
        else:
            d = c.difference
            out |= {
                "difference": _num(d.value),
                "ci95": [_num(d.low), _num(d.high)],
                "prompts": d.prompts,
                "pairs": d.pairs,
                "higher_is_better": c.higher_is_better,
                "difference_to_detect": _num(c.difference_effect),
                "difference_from_baseline_sd": c.effect_from_baseline_sd,
                "prompts_needed": c.prompts_needed,
                "prompts_needed_always_valid": c.sequential_prompts_needed,
            }
        return out


@dataclass(frozen=True)
class Decisions:
    """Every variant against the baseline (see the module docstring), with the settings used."""

    baseline: str | None
    statistics: StatisticsSpec
    people: list[Decision] = field(default_factory=list)  # human votes and scores: one family
    judges: list[Decision] = field(default_factory=list)  # judges' votes: another family
    prompts: int = 0  # prompts with a score of the baseline (the unit of score comparisons)

    @property
    def few_prompts(self) -> bool:
        return 0 < self.prompts < FEW_PROMPTS

    def warning(self) -> str:
        """One sentence when score intervals rest on few prompts; "" otherwise."""
        if not self.few_prompts:
            return ""
        return (
            f"Score comparisons rest on {self.prompts} prompts (fewer than {FEW_PROMPTS}): their intervals are "
            "wide and depend on how representative these prompts are; add prompts for firmer verdicts."
        )

    def settings_sentence(self) -> str:
        s = self.statistics
        correction = "Holm" if s.correction == "holm" else "Benjamini–Hochberg"
        return (
            f"Alpha {s.alpha:g} per family after {correction} correction over "
            f"{len(self.people)} comparisons (votes and scores){' and ' + str(len(self.judges)) + ' of judges' if self.judges else ''}; "
            f"power {s.power:.0%} to detect a {s.win_rate:.0%} win rate, or the score differences shown."
        )

    def to_data(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "settings": self.statistics.to_dict(full=True),
            "prompts": self.prompts,
            "few_prompts_warning": self.warning() or None,
            "against_baseline": [d.to_data() for d in self.people],
            "judges_against_baseline": [d.to_data() for d in self.judges],
        }


Row = tuple[int, int]  # (prompt position, sample)
# (variant, metric) -> (prompt, sample) -> score
ScoreTable = Mapping[str, Mapping[str, Mapping[Row, float]]]


def score_table(rows: Iterable[tuple[str, int, int, str, float]]) -> dict[str, dict[str, dict[Row, float]]]:
    """Per variant and metric, the scores by (prompt, sample), from (variant, prompt, sample, metric, value) rows."""
    out: dict[str, dict[str, dict[Row, float]]] = {}
    for variant, prompt, sample, metric, value in rows:
        out.setdefault(variant, {}).setdefault(metric, {})[(prompt, sample)] = value
    return out


def wins_and_losses(tallies: Mapping[Tally, int], variant: str, opponent: str) -> tuple[int, int]:
    """Decisive votes between two variants: (wins of ``variant``, its losses), whatever the sides."""
    wins = losses = 0
    for (left, right, choice), n in tallies.items():
        if {left, right} != {variant, opponent} or choice not in ("left", "right"):
            continue
        if (choice == "left") == (left == variant):
            wins += n
        else:
            losses += n
    return wins, losses


def score_order(spec: ExperimentSpec, table: ScoreTable) -> list[str]:
    """The experiment's scorers in file order, then fluency when it was measured."""
    present = {metric for metrics in table.values() for metric in metrics}
    names = [s.name for s in spec.scorers if s.name in present]
    return names + ([FLUENCY] if FLUENCY in present else [])


def pair_decisions(
    variant: str,
    opponent: str,
    tallies: Mapping[Tally, int],
    table: ScoreTable,
    metrics: Sequence[str],
    statistics: StatisticsSpec,
    votes_metric: str = HUMAN_VOTES,
) -> list[Decision]:
    """``variant`` against ``opponent`` on votes and on each metric, uncorrected."""
    wins, losses = wins_and_losses(tallies, variant, opponent)
    out = [
        Decision(
            variant,
            opponent,
            votes_metric,
            votes=compare_votes(wins, losses, statistics.alpha, statistics.power, statistics.win_rate),
        )
    ]
    for metric in metrics:
        out.append(
            Decision(
                variant,
                opponent,
                metric,
                score=compare_scores(
                    table.get(variant, {}).get(metric, {}),
                    table.get(opponent, {}).get(metric, {}),
                    statistics.alpha,
                    statistics.power,
                    statistics.difference_for(metric),
                    higher_is_better=statistics.higher_is_better(metric),
                ),
            )
        )
    return out


def corrected(decisions: list[Decision], statistics: StatisticsSpec) -> list[Decision]:
    """The decisions as one family, with adjusted p-values and the verdicts they imply."""
    if not decisions:
        return []
    method: CorrectionMethod = "holm" if statistics.correction == "holm" else "benjamini_hochberg"
    fixed = correct([d.comparison for d in decisions], method)
    return [
        Decision(d.variant, d.opponent, d.metric, votes=c, score=None)
        if isinstance(c, VoteComparison)
        else Decision(d.variant, d.opponent, d.metric, votes=None, score=c)
        for d, c in zip(decisions, fixed, strict=True)
    ]


def decide(
    spec: ExperimentSpec,
    baseline: str | None,
    human_tallies: Mapping[Tally, int],
    judge_tallies: Mapping[str, Mapping[Tally, int]],
    table: ScoreTable,
    statistics: StatisticsSpec,
) -> Decisions:
    """Every variant against the baseline, corrected per family (see the module docstring)."""
    if baseline is None:
        return Decisions(None, statistics)
    contenders = [v.name for v in spec.variants if v.name != baseline and not v.control_of]
    metrics = score_order(spec, table)
    people = [
        d
        for variant in contenders
        for d in pair_decisions(variant, baseline, human_tallies, table, metrics, statistics)
    ]
    judges = [
        d
        for judge, tallies in sorted(judge_tallies.items())
        for variant in contenders
        for d in pair_decisions(variant, baseline, tallies, {}, [], statistics, judge_metric(judge))
    ]
    scored_prompts = {prompt for metric in table.get(baseline, {}).values() for prompt, _ in metric}
    return Decisions(
        baseline, statistics, corrected(people, statistics), corrected(judges, statistics), len(scored_prompts)
    )


def tally_counter(rows: Iterable[tuple[str, str, str, int]]) -> Counter[Tally]:
    out: Counter[Tally] = Counter()
    for left, right, choice, n in rows:
        out[(left, right, choice)] += n
    return out


def describe_p(decision: Decision) -> tuple[str, str]:
    """(raw p-value, adjusted p-value) as a page shows them."""
    c = decision.comparison
    return format_p_value(c.p_value), format_p_value(c.adjusted_p_value)


def _num(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None
