"""Does each steering vector beat its null arms? The figures Compare shows for every arm.

A steering variant with ``null_arms`` (see :mod:`engine.null_arms`) runs beside its
controls: the same edit with a random direction of the same norm, and with the vector's
sign flipped. For each such variant and each arm this gives:

- per score (each scorer, and fluency), the paired difference *real minus arm* over
  (prompt, sample): the two share the random stream of each (prompt, sample) (common
  random numbers), so matched outputs differ by the vector alone. The interval is
  :func:`engine.stats.paired_difference`'s (over prompts), with its numbers of prompts and
  of pairs;
- per kind of rater (humans, and judges apart), the real variant's win rate against its
  arm: decisive votes between the two (wins / (wins + losses)) with a 95% Wilson interval,
  ties and both-bad votes counted apart. A rater's deliberate repeat of a pair measures the
  rater, not the variants, so only first showings count; raters in ``exclude`` count in
  nothing.

A vector "beats" its random arm on a score when the interval of the difference excludes 0
(in the direction the team wanted); the flipped arm shows that the effect reverses with the
sign. :func:`null_arm_results` computes all of it from plain rows (no store), and
:func:`null_arm_comparison` reads them from the store (cached per data version).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from db import repository as repo
from db.store import Store
from engine.spec import ExperimentSpec
from engine.stats import MIN_DECISIVE_VOTES, Estimate, PairedDifference, paired_difference, wilson_interval
from service import cache
from service.catalog import get_experiment, stored_spec
from service.provenance import FLUENCY

RATER_KINDS = ("human", "judge")

# A score row: (variant name, prompt position, sample, metric, value).
ScoreRow = tuple[str, int, int, str, float]


@dataclass(frozen=True)
class VoteRow:
    """One vote between two variants, as the null-arm figures need it."""

    rater: str
    rater_kind: str  # "human" or "judge"
    left_variant: str
    right_variant: str
    choice: str  # "left", "right", "tie" or "both_bad"
    repeat: int = 0  # 0: a first showing; 1: the rater's deliberate second look at the pair


@dataclass(frozen=True)
class ArmVotes:
    """The real variant against its null arm in one kind of rater's votes."""

    rater_kind: str
    wins: int  # votes for the real variant
    losses: int  # votes for the null arm
    ties: int
    both_bad: int
    estimate: Estimate  # wins / (wins + losses), 95% Wilson interval, n = decisive votes

    @property
    def decisive(self) -> int:
        return self.wins + self.losses

    @property
    def votes(self) -> int:
        return self.wins + self.losses + self.ties + self.both_bad

    @property
    def enough_votes(self) -> bool:
        """Whether the win rate rests on enough decisive votes to be shown (``MIN_DECISIVE_VOTES``)."""
        return self.estimate.enough(MIN_DECISIVE_VOTES)

    def verdict(self) -> str:
        """In words: which side the raters prefer, judged by whether the interval excludes one half."""
        if not self.enough_votes:
            return f"too few votes (n={self.decisive} decisive votes; needs {MIN_DECISIVE_VOTES})"
        if self.estimate.low > 0.5:
            return "the real variant is preferred"
        if self.estimate.high < 0.5:
            return "the null arm is preferred"
        return "no detectable preference"


@dataclass(frozen=True)
class NullArmResult:
    """One steering variant against one of its null arms."""

    variant: str  # the real variant
    arm: str  # "random" or "flipped"
    arm_variant: str  # the arm's variant name, e.g. "sad_x2 (random)"
    scores: dict[str, PairedDifference]  # score name -> real minus arm, paired over (prompt, sample)
    votes: dict[str, ArmVotes]  # "human", "judge" -> the real variant's votes against the arm


def score_verdict(difference: PairedDifference) -> str:
    """In words: whether the real variant scores higher or lower than the arm, by the 95% interval."""
    if difference.prompts == 0 or not math.isfinite(difference.value):
        return "no paired outputs yet"
    if not (math.isfinite(difference.low) and math.isfinite(difference.high)):
        return f"no interval from {difference.prompts} prompt(s) yet"
    if difference.low > 0:
        return "the real variant scores higher"
    if difference.high < 0:
        return "the real variant scores lower"
    return "no detectable difference"


def null_arm_results(
    spec: ExperimentSpec, scores: Iterable[ScoreRow], votes: Iterable[VoteRow], exclude: Collection[str] = ()
) -> list[NullArmResult]:
    """Every steering variant's comparison with each of its null arms, in variant order (no store)."""
    arms = [v for v in spec.variants if v.control_of]
    if not arms:
        return []
    by_variant: dict[str, dict[str, dict[tuple[int, int], float]]] = {}
    for variant, prompt, sample, metric, value in scores:
        by_variant.setdefault(variant, {}).setdefault(metric, {})[(prompt, sample)] = value
    order = _score_order(spec, {metric for metrics in by_variant.values() for metric in metrics})
    vote_list = [v for v in votes if v.repeat == 0 and v.rater not in exclude]
    out = []
    for arm in arms:
        real_scores, arm_scores = by_variant.get(arm.control_of, {}), by_variant.get(arm.name, {})
        out.append(
            NullArmResult(
                variant=arm.control_of,
                arm=arm.control,
                arm_variant=arm.name,
                scores={
                    metric: paired_difference(real_scores.get(metric, {}), arm_scores.get(metric, {}))
                    for metric in order
                    if metric in real_scores or metric in arm_scores
                },
                votes={kind: _arm_votes(vote_list, kind, arm.control_of, arm.name) for kind in RATER_KINDS},
            )
        )
    return out


def null_arm_comparison(store: Store, name: str, exclude: Collection[str] = ()) -> list[NullArmResult]:
    """:func:`null_arm_results` of a stored experiment; recomputed only when its data changed."""
    with store.session() as session:
        version = repo.data_version(session, get_experiment(session, name).id)
    return cache.cached(
        (store.url, "null arms", name, tuple(sorted(exclude))),
        version,
        lambda: _from_store(store, name, exclude),
    )


def _from_store(store: Store, name: str, exclude: Collection[str]) -> list[NullArmResult]:
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        if not any(v.control_of for v in spec.variants):
            return []
        names = {v.id: v.name for v in experiment.variants}
        scores = [(names[v], p, s, m, x) for v, p, s, m, x in repo.score_rows(session, experiment.id)]
        votes = [
            VoteRow(r.rater, r.rater_kind, r.left_variant, r.right_variant, r.choice, r.repeat)
            for r in repo.rating_rows(session, experiment.id)
        ]
    return null_arm_results(spec, scores, votes, exclude)


def _score_order(spec: ExperimentSpec, present: set[str]) -> list[str]:
    """The experiment's scorers in their order, then fluency, then any other stored score by name."""
    declared = [s.name for s in spec.scorers]
    known = [*declared, FLUENCY]
    return [m for m in known if m in present] + sorted(present - set(known))


def _arm_votes(votes: Sequence[VoteRow], kind: str, real: str, arm: str) -> ArmVotes:
    wins = losses = ties = both_bad = 0
    for vote in votes:
        if vote.rater_kind != kind or {vote.left_variant, vote.right_variant} != {real, arm}:
            continue
        if vote.choice == "tie":
            ties += 1
        elif vote.choice == "both_bad":
            both_bad += 1
        elif (vote.choice == "left") == (vote.left_variant == real):
            wins += 1
        else:
            losses += 1
    return ArmVotes(kind, wins, losses, ties, both_bad, wilson_interval(wins, wins + losses))
