"""Plain verdicts on comparisons: better, worse, no detectable difference, or keep rating.

A comparison is a variant against another (usually the baseline) on decisive votes, or on a
score paired over (prompt, sample) rows. Each gets one verdict, by these rules in order:

1. **better / worse**: the comparison's test is significant at ``alpha``
   after the correction for the whole family of comparisons (engine.multiplicity), i.e. its
   adjusted p-value is at most ``alpha``; the sign of the estimate says which (for a score
   where lower is better, a negative difference is "better"). Because the test is always
   valid, this may be read after every vote, and the team may stop there.
2. **no detectable difference**: not significant, and there are already as many decisive
   votes (or prompts) as the always-valid test needs to find the chosen effect (a win rate, or
   a difference in score) with the chosen power at level alpha / m, where m is the number of
   comparisons in the corrected family (the level the smallest p-value must beat under either
   correction). A real effect of that size would very probably have been found; a smaller
   one may still exist.
3. **keep rating**: otherwise, with how many more votes (or prompts) the test needs; unknown
   (None) while there is too little data to estimate it (a score comparison with fewer than
   2 prompts, or a baseline without spread to size the default effect).

The test: for votes, the always-valid test (engine.sequential), because votes arrive every
day and a team looks as they come; for scores, the exact sign-flip test of the per-prompt
differences (engine.stats.sign_flip_p_value; valid at every level, which a t-test is not at
the small levels corrections use), because a run's scores arrive at once for a prompt set fixed in the
definition. The always-valid figures of a score comparison are kept beside it, for a team that
adds prompts run after run and looks each time.

Units: decisive votes (wins plus losses; ties and both-bad votes tell nothing about which
side is better) for vote comparisons, prompts for score comparisons; every sentence says which
and how many there are so far. :func:`compare_votes` and :func:`compare_scores` build a
comparison from plain data; :func:`correct` returns copies with the family's adjusted
p-values and the verdicts they imply, so the figures stay recomputable after the family
changes. The raw p-value and the intervals stay as they were ("shown next to the raw figure").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, Self, TypeVar

import numpy as np
from scipy import special

from engine.errors import SteerLabError
from engine.multiplicity import CORRECTION_NAMES, CorrectionMethod, adjust
from engine.power import check_alpha, check_power, check_win_rate, decisive_votes_needed, prompts_needed
from engine.sequential import (
    SCORE_MIXTURE_SD,
    AlwaysValid,
    mean_test,
    sequential_prompts_needed,
    sequential_votes_needed,
    vote_test,
)
from engine.stats import (
    Estimate,
    PairedDifference,
    RowKey,
    format_p_value,
    group_means,
    prompt_differences,
    sign_flip_p_value,
    skew_corrected_mean,
    wilson_interval,
)

VerdictLabel = Literal["better", "worse", "no detectable difference", "keep rating"]
Unit = Literal["votes", "prompts"]
_UNIT_WORDS: dict[Unit, tuple[str, str]] = {
    "votes": ("decisive vote", "decisive votes"),
    "prompts": ("prompt", "prompts"),
}


@dataclass(frozen=True)
class Verdict:
    label: VerdictLabel
    more_needed: int | None  # more votes or prompts to reach ``needed``: 0 unless "keep rating"; None: unknown yet
    sentence: str  # one sentence a page can show
    unit: Unit
    n: int  # decisive votes or prompts so far
    needed: int | None  # decisive votes or prompts the always-valid test needs for the power; None: unknown yet


def _count(n: int, unit: Unit) -> str:
    one, many = _UNIT_WORDS[unit]
    return f"{n} {one if n == 1 else many}"


def verdict(
    estimate: float,
    p_value: float,
    n: int,
    needed: int | None,
    alpha: float,
    unit: Unit,
    effect: str,
    power: float = 0.8,
    higher_is_better: bool = True,
    correction: CorrectionMethod | None = None,
    family: int = 1,
    test: str = "the always-valid test",
) -> Verdict:
    """The verdict by the rules of the module docstring.

    ``estimate`` is signed against the null (win rate - 1/2, or the mean difference); ``p_value``
    the p-value of ``test``, adjusted for the family; ``needed`` the votes or prompts the test
    needs for ``power`` at the family's level; ``effect`` names the effect in words ("a 60% win
    rate"); ``correction`` how the p-value was adjusted over a family of ``family`` comparisons
    (None: not adjusted).
    """
    level, chance = check_alpha(alpha), f"{100 * check_power(power):g}%"
    # More votes come from rating; more prompts from adding prompts to the experiment and running it.
    more_lead = "Keep rating" if unit == "votes" else "Add prompts"
    how, so_far = format_p_value(p_value), f"{n} so far"
    if correction is not None and family > 1:
        how += f", {CORRECTION_NAMES[correction]}-adjusted over {family} comparisons"
        so_far = f"corrected for {family} comparisons; {so_far}"
    if math.isfinite(p_value) and p_value <= level and math.isfinite(estimate) and estimate != 0.0:
        label: VerdictLabel = "better" if (estimate > 0) == higher_is_better else "worse"
        return Verdict(
            label,
            0,
            f"{label.capitalize()}: {test} is significant at alpha {level:g} ({how}) after {_count(n, unit)}.",
            unit,
            n,
            needed,
        )
    if needed is None:
        return Verdict(
            "keep rating",
            None,
            f"{more_lead}: too little data yet to estimate how many more {_UNIT_WORDS[unit][1]} are needed to "
            f"detect {effect} with {chance} power ({so_far}).",
            unit,
            n,
            None,
        )
    if n >= needed:
        return Verdict(
            "no detectable difference",
            0,
            f"No detectable difference: {_count(n, unit)}, enough to detect {effect} with {chance} power, and "
            f"{test} is not significant ({how}).",
            unit,
            n,
            needed,
        )
    more = needed - n
    return Verdict(
        "keep rating",
        more,
        f"{more_lead}: about {more} more {_UNIT_WORDS[unit][0 if more == 1 else 1]} to detect {effect} with "
        f"{chance} power ({so_far}).",
        unit,
        n,
        needed,
    )


@dataclass(frozen=True)
class VoteComparison:
    """A variant against an opponent on decisive votes (wins and losses of the variant)."""

    wins: int
    losses: int
    win_rate: Estimate  # wins / decisive votes, Wilson interval at 1 - alpha (for one look)
    sequential: AlwaysValid  # always-valid confidence sequence for the win rate and p-value of 1/2
    alpha: float
    power: float
    win_rate_effect: float  # the win rate worth detecting
    votes_needed: int  # decisive votes the always-valid test needs for the power at alpha / family
    fixed_votes_needed: int  # the same for one look at the end (engine.power.decisive_votes_needed)
    verdict: Verdict
    adjusted_p_value: float  # = p_value until corrected
    correction: CorrectionMethod | None = None
    family: int = 1  # comparisons in the corrected family

    @property
    def decisive(self) -> int:
        return self.wins + self.losses

    @property
    def p_value(self) -> float:
        """The raw always-valid p-value of "win rate = 1/2"."""
        return self.sequential.p_value

    def corrected(self, adjusted_p_value: float, method: CorrectionMethod, family: int) -> Self:
        """A copy with the family's adjusted p-value, and the votes needed and verdict at its level."""
        needed = sequential_votes_needed(self.win_rate_effect, self.alpha / family, self.power)
        return dataclasses.replace(
            self,
            adjusted_p_value=adjusted_p_value,
            correction=method,
            family=family,
            votes_needed=needed,
            fixed_votes_needed=decisive_votes_needed(self.win_rate_effect, self.alpha / family, self.power),
            verdict=_vote_verdict(self.sequential, adjusted_p_value, needed, self, method, family),
        )


def _vote_verdict(
    sequential: AlwaysValid,
    p_value: float,
    needed: int,
    spec: VoteComparison | _VoteSettings,
    correction: CorrectionMethod | None,
    family: int,
) -> Verdict:
    return verdict(
        sequential.value - 0.5 if sequential.n else math.nan,
        p_value,
        sequential.n,
        needed,
        spec.alpha,
        "votes",
        f"a {100 * spec.win_rate_effect:g}% win rate",
        spec.power,
        correction=correction,
        family=family,
    )


@dataclass(frozen=True)
class _VoteSettings:
    alpha: float
    power: float
    win_rate_effect: float


def compare_votes(
    wins: int, losses: int, alpha: float = 0.05, power: float = 0.8, win_rate_effect: float = 0.6
) -> VoteComparison:
    """A variant's decisive votes against an opponent: Wilson interval, always-valid interval and p-value,
    votes needed (always-valid and single-look) and the verdict, uncorrected (see :func:`correct`)."""
    if wins < 0 or losses < 0:
        raise ValueError(f"negative vote counts: {wins} wins, {losses} losses")
    settings = _VoteSettings(check_alpha(alpha), check_power(power), check_win_rate(win_rate_effect))
    sequential = vote_test(wins, losses, alpha, win_rate_effect)
    needed = sequential_votes_needed(win_rate_effect, alpha, power)
    return VoteComparison(
        wins=wins,
        losses=losses,
        win_rate=wilson_interval(wins, wins + losses, z=float(special.ndtri(1.0 - alpha / 2.0))),
        sequential=sequential,
        alpha=settings.alpha,
        power=settings.power,
        win_rate_effect=settings.win_rate_effect,
        votes_needed=needed,
        fixed_votes_needed=decisive_votes_needed(win_rate_effect, alpha, power),
        verdict=_vote_verdict(sequential, sequential.p_value, needed, settings, None, 1),
        adjusted_p_value=sequential.p_value,
    )


@dataclass(frozen=True)
class ScoreComparison:
    """A variant's score minus the baseline's, paired over matched (prompt, sample) rows."""

    difference: PairedDifference  # mean of per-prompt differences, one-look interval at 1 - alpha, its p-value
    sign_flip_p_value: float  # the exact sign-flip test of "no difference": the verdict's test
    sequential: AlwaysValid  # always-valid confidence sequence for the mean difference, p-value of 0
    alpha: float
    power: float
    difference_effect: float  # the difference worth detecting (NaN: none could be set yet)
    effect_from_baseline_sd: bool  # True: not given, so half the baseline's per-prompt SD
    baseline_sd: float  # SD of the baseline's per-prompt mean scores over the shared prompts
    higher_is_better: bool
    prompts_needed: int | None  # prompts the paired t-test needs for the power at alpha / family (one look)
    sequential_prompts_needed: int | None  # the same for the always-valid test, looked at after every prompt
    verdict: Verdict
    adjusted_p_value: float  # = p_value until corrected
    correction: CorrectionMethod | None = None
    family: int = 1

    @property
    def prompts(self) -> int:
        return self.difference.prompts

    @property
    def pairs(self) -> int:
        return self.difference.pairs

    @property
    def p_value(self) -> float:
        """The raw p-value of "no difference" of the exact sign-flip test over prompts (the verdict's test;
        the always-valid one is ``sequential.p_value``)."""
        return self.sign_flip_p_value

    @property
    def effect_words(self) -> str:
        """The effect in words, e.g. "a difference of 0.05 (half the baseline's per-prompt SD)"."""
        if not math.isfinite(self.difference_effect):
            return "a difference (half the baseline's per-prompt SD, not measurable yet)"
        source = " (half the baseline's per-prompt SD)" if self.effect_from_baseline_sd else ""
        return f"a difference of {self.difference_effect:.3g}{source}"

    def corrected(self, adjusted_p_value: float, method: CorrectionMethod, family: int) -> Self:
        """A copy with the family's adjusted p-value, and the prompts needed and verdict at its level."""
        sequential_needed, fixed_needed = _prompts_needed(
            self.difference.sd, self.difference_effect, self.alpha / family, self.power
        )
        updated = dataclasses.replace(
            self,
            adjusted_p_value=adjusted_p_value,
            correction=method,
            family=family,
            prompts_needed=fixed_needed,
            sequential_prompts_needed=sequential_needed,
        )
        return dataclasses.replace(updated, verdict=_score_verdict(updated))


def _prompts_needed(sd: float, effect: float, alpha: float, power: float) -> tuple[int | None, int | None]:
    if not (math.isfinite(sd) and math.isfinite(effect) and effect > 0):
        return None, None
    return sequential_prompts_needed(sd, effect, alpha, power, SCORE_MIXTURE_SD), prompts_needed(
        sd, effect, alpha, power
    )


def _score_verdict(comparison: ScoreComparison) -> Verdict:
    return verdict(
        comparison.difference.value,
        comparison.adjusted_p_value,
        comparison.prompts,
        comparison.prompts_needed,
        comparison.alpha,
        "prompts",
        comparison.effect_words,
        comparison.power,
        comparison.higher_is_better,
        comparison.correction,
        comparison.family,
        "the paired sign-flip test over prompts",
    )


def compare_scores(
    variant_scores: Mapping[RowKey, float],
    baseline_scores: Mapping[RowKey, float],
    alpha: float = 0.05,
    power: float = 0.8,
    difference_effect: float | None = None,
    higher_is_better: bool = True,
) -> ScoreComparison:
    """A variant's scores against the baseline's, keyed by (prompt, sample): paired difference, always-valid
    interval and p-value, prompts needed and the verdict, uncorrected (see :func:`correct`).

    ``difference_effect`` is the smallest difference worth detecting; None takes half the SD of the
    baseline's per-prompt mean scores (over the prompts both have), and says so.
    """
    level, chance = check_alpha(alpha), check_power(power)
    if difference_effect is not None and not (math.isfinite(difference_effect) and difference_effect > 0):
        raise SteerLabError(
            f"The score difference to detect {difference_effect!r} is not a positive number: give the smallest "
            "difference worth detecting, like 0.05."
        )
    units, pairs = prompt_differences(variant_scores, baseline_scores)
    fixed = skew_corrected_mean(units, 1.0 - level)
    # The interval estimates the mean difference (skewness-corrected t, its p-value the interval
    # inverted); the verdict's test of "no difference" is the exact sign-flip test, valid at the small
    # levels a correction over many comparisons asks for.
    difference = PairedDifference(
        fixed.value, fixed.low, fixed.high, fixed.n, pairs, fixed.sd, fixed.p_value, 1.0 - level
    )
    exact_p_value = sign_flip_p_value(units)
    baseline_sd = _baseline_sd(variant_scores, baseline_scores)
    effect = difference_effect if difference_effect is not None else baseline_sd / 2.0
    sequential_needed, fixed_needed = _prompts_needed(difference.sd, effect, level, chance)
    sequential = mean_test(units, level, SCORE_MIXTURE_SD)
    comparison = ScoreComparison(
        difference=difference,
        sign_flip_p_value=exact_p_value,
        sequential=sequential,
        alpha=level,
        power=chance,
        difference_effect=effect if math.isfinite(effect) and effect > 0 else math.nan,
        effect_from_baseline_sd=difference_effect is None,
        baseline_sd=baseline_sd,
        higher_is_better=higher_is_better,
        prompts_needed=fixed_needed,
        sequential_prompts_needed=sequential_needed,
        verdict=Verdict("keep rating", None, "", "prompts", 0, None),  # replaced below
        adjusted_p_value=exact_p_value,
    )
    return dataclasses.replace(comparison, verdict=_score_verdict(comparison))


def _baseline_sd(variant_scores: Mapping[RowKey, float], baseline_scores: Mapping[RowKey, float]) -> float:
    """SD of the baseline's per-prompt mean scores over the rows both sides have (NaN below 2 prompts)."""
    keys = [
        k
        for k, v in variant_scores.items()
        if k in baseline_scores and math.isfinite(v) and math.isfinite(baseline_scores[k])
    ]
    means, _ = group_means(np.array([baseline_scores[k] for k in keys], dtype=float), [k[0] for k in keys])
    return float(means.std(ddof=1)) if means.size >= 2 else math.nan


class Correctable(Protocol):
    """What :func:`correct` needs of a comparison: VoteComparison and ScoreComparison are ones."""

    @property
    def p_value(self) -> float: ...

    def corrected(self, adjusted_p_value: float, method: CorrectionMethod, family: int) -> Self: ...


Comparison = TypeVar("Comparison", bound=Correctable)


def correct(comparisons: Sequence[Comparison], method: CorrectionMethod = "holm") -> list[Comparison]:
    """Copies of ``comparisons`` (one family: e.g. every variant against the baseline, on votes and on each
    score) with p-values adjusted by ``method`` and the verdicts and sample sizes that follow (see the
    module docstring). Every comparison counts in the family, with or without data yet: the family is
    what the team looks at, and it must not shrink or grow with the data."""
    adjusted = adjust([c.p_value for c in comparisons], method)
    family = len(comparisons)
    return [c.corrected(p, method, family) for c, p in zip(comparisons, adjusted, strict=True)]
