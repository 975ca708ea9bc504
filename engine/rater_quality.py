"""How far each rater's votes can be trusted: agreement with the others, side bias, self-consistency.

Everything is read from the votes themselves:

- *Agreement*: on each pair a rater shares with other human raters, does the rater's verdict
  match the majority verdict of the *others* (the rater left out, so a rater never agrees with
  themselves)? A pair where the others are split evenly has no majority and is skipped. The
  reference is always the human raters: a judge is measured against them too.
- *Side*: the share of the rater's decisive votes that chose the left output. Sides are drawn at
  random, so an attentive rater is near 0.5.
- *Self-consistency*: on a pair shown to the rater again (``repeat`` ≥ 1), did they give the
  same verdict as the first time? Verdicts are in terms of the outputs, so a repeat shown
  with the sides swapped still matches.

A rater that an analyst left out (``exclude``) still gets a row, but counts in nobody else's
reference and in no pool figure.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass

from engine.battles import pair_verdict
from engine.ranking import cohen_kappa
from engine.stats import Estimate, wilson_interval

HUMAN = "human"
JUDGE = "judge"

# The outlier rules. Each needs enough evidence before it fires, and each is a 95% interval
# lying clearly on the wrong side, so an honest rater with few votes is never flagged.
# 1. Agreement: at least MIN_SHARED_PAIRS pairs with a majority of the others, and the rater's
#    interval entirely below the interval of the other raters' pooled agreement (their matches
#    over their pairs, computed without this rater's votes): the two 95% intervals do not
#    overlap, a conservative test, so a rater is not flagged for falling a little short of a
#    pool that happens to agree perfectly.
MIN_SHARED_PAIRS = 10
# 2. Side: at least MIN_DECISIVE_FOR_SIDE decisive votes, the interval excluding 0.5, and the share
#    itself outside 0.5 ± SIDE_MARGIN (with thousands of votes a 52% left share is significant
#    but harmless).
MIN_DECISIVE_FOR_SIDE = 20
SIDE_MARGIN = 0.1
# 3. Self-consistency: at least MIN_REPEATS repeated pairs and the whole interval below 0.5: the
#    rater changes their verdict more often than they keep it.
MIN_REPEATS = 5
MIN_CONSISTENCY = 0.5


@dataclass(frozen=True)
class RaterVote:
    """One stored vote, as rater statistics need it."""

    rater: str
    kind: str  # HUMAN or JUDGE
    left_id: int
    right_id: int
    choice: str  # "left", "right", "tie", "both_bad"
    repeat: int = 0  # 0 for the first showing of the pair to this rater

    @property
    def pair(self) -> tuple[int, int]:
        return (min(self.left_id, self.right_id), max(self.left_id, self.right_id))

    @property
    def verdict(self) -> str:
        """The verdict in terms of the two outputs, whatever side each was shown on."""
        return pair_verdict(self.left_id, self.right_id, self.choice)


@dataclass(frozen=True)
class RaterQuality:
    rater: str
    kind: str
    votes: int  # every vote, repeats included
    decisive: int  # votes for one side
    agreement: Estimate  # share of shared pairs where the rater matched the others' majority (n = those pairs)
    kappa: float  # Cohen's kappa between the rater and the others' majority on those pairs (NaN: undefined)
    left_share: Estimate  # share of decisive votes for the left side (n = decisive votes)
    self_consistency: Estimate  # share of repeats with the first verdict (n = repeats)
    reasons: tuple[str, ...] = ()  # why the rater is flagged, one sentence each; empty: not flagged
    excluded: bool = False  # left out of every statistic by an analyst

    @property
    def outlier(self) -> bool:
        return bool(self.reasons)

    @property
    def reason(self) -> str:
        return " ".join(self.reasons)


@dataclass(frozen=True)
class JudgeAgreement:
    """A judge's verdicts against the human majority on the pairs both rated."""

    judge: str
    pairs: int  # pairs with a judge verdict and a human majority
    kappa: float  # Cohen's kappa (NaN where undefined: every verdict the same)
    agreement: Estimate  # share of those pairs where the judge matched the human majority
    split_pairs: int  # pairs both rated where the humans were split evenly (left out)

    def describe(self) -> str:
        if not self.pairs:
            return f"{self.judge}: no pairs rated by both the judge and a human majority yet"
        kappa = f"{self.kappa:.2f}" if math.isfinite(self.kappa) else "not defined (every verdict the same)"
        return (
            f"{self.judge}: Cohen's kappa with the human majority {kappa}, agreement "
            f"{self.agreement.value:.0%} [{self.agreement.low:.0%}, {self.agreement.high:.0%}] on {self.pairs} pairs"
        )


def _majority(verdicts: Iterable[str]) -> str | None:
    """The most frequent verdict, or None when two or more share the top count (or there are none)."""
    top = Counter(verdicts).most_common(2)
    if not top or (len(top) == 2 and top[0][1] == top[1][1]):
        return None
    return top[0][0]


def _first_showings(votes: Iterable[RaterVote]) -> dict[tuple[str, tuple[int, int]], RaterVote]:
    """(rater, pair) -> the rater's first showing of the pair (the lowest repeat number)."""
    first: dict[tuple[str, tuple[int, int]], RaterVote] = {}
    for v in votes:
        key = (v.rater, v.pair)
        if key not in first or v.repeat < first[key].repeat:
            first[key] = v
    return first


def _by_pair(first: dict[tuple[str, tuple[int, int]], RaterVote]) -> dict[tuple[int, int], dict[str, str]]:
    """pair -> rater -> verdict of the rater's first showing of the pair."""
    by_pair: dict[tuple[int, int], dict[str, str]] = {}
    for (rater, pair), v in first.items():
        by_pair.setdefault(pair, {})[rater] = v.verdict
    return by_pair


def _judged(verdicts: dict[str, str], pool: Collection[str], absent: str | None = None) -> dict[str, tuple[str, str]]:
    """Rater -> (their verdict, the majority verdict of the other pool raters) on one pair, for the
    raters whose others have a majority there; ``absent`` is left out as if they had not voted.

    The pool's verdicts are counted once and each rater's own taken off in turn: linear in the
    raters of the pair (a pair every one of 20 raters rated is judged 20 times over, once per
    absent rater, for the others' reference agreement).
    """
    counts = Counter(v for r, v in verdicts.items() if r in pool and r != absent)
    out = {}
    for rater, verdict in verdicts.items():
        if rater == absent:
            continue
        own = rater in pool
        if own:
            counts[verdict] -= 1
        majority = _top(counts)
        if own:
            counts[verdict] += 1
        if majority is not None:
            out[rater] = (verdict, majority)
    return out


def _top(counts: Counter[str]) -> str | None:
    """The verdict with the most votes, or None when none has any or two share the top count (as :func:`_majority`)."""
    best, best_count, shared = None, 0, False
    for verdict, n in counts.items():
        if n > best_count:
            best, best_count, shared = verdict, n, False
        elif n == best_count and n > 0:
            shared = True
    return None if best_count == 0 or shared else best


def rater_quality(votes: Sequence[RaterVote], exclude: Collection[str] = ()) -> list[RaterQuality]:
    """Per rater (humans first, then judges, each by name): counts, agreement, side, self-consistency, flags."""
    kinds = {v.rater: v.kind for v in votes}
    pool = {r for r, kind in kinds.items() if kind == HUMAN and r not in exclude}
    first = _first_showings(votes)
    by_pair = _by_pair(first)

    mine: dict[str, list[str]] = {}
    theirs: dict[str, list[str]] = {}
    # The reference for each rater: how well the *other* pool raters agree with their own others'
    # majority when this rater's votes are left out (so a contrarian among three raters, who
    # splits every pair for the other two, is still measured against their agreement). Counted
    # as the pool's totals, corrected on the pairs the rater voted on.
    pool_matches = pool_pairs = 0
    correction_matches: Counter[str] = Counter()
    correction_pairs: Counter[str] = Counter()
    for verdicts in by_pair.values():
        if len(verdicts) < 2:  # nobody else rated the pair: no majority to agree with, none to correct
            continue
        judged = _judged(verdicts, pool)
        for rater, (verdict, majority) in judged.items():
            mine.setdefault(rater, []).append(verdict)
            theirs.setdefault(rater, []).append(majority)
            if rater in pool:
                pool_matches += verdict == majority
                pool_pairs += 1
        for absent in verdicts:
            without = _judged(verdicts, pool, absent)
            for rater in pool.intersection(verdicts).difference([absent]):
                if rater in without:
                    correction_matches[absent] += without[rater][0] == without[rater][1]
                    correction_pairs[absent] += 1
                if rater in judged:
                    correction_matches[absent] -= judged[rater][0] == judged[rater][1]
                    correction_pairs[absent] -= 1
    matches = {r: sum(a == b for a, b in zip(mine[r], theirs[r], strict=True)) for r in mine}

    counts: Counter[str] = Counter()
    decisive: Counter[str] = Counter()
    left: Counter[str] = Counter()
    repeats: Counter[str] = Counter()
    same: Counter[str] = Counter()
    for v in votes:
        counts[v.rater] += 1
        if v.choice in ("left", "right"):
            decisive[v.rater] += 1
            left[v.rater] += v.choice == "left"
        earlier = first[(v.rater, v.pair)]
        if v.repeat > earlier.repeat:  # a later showing of a pair the rater has judged before
            repeats[v.rater] += 1
            same[v.rater] += v.verdict == earlier.verdict

    report = []
    for rater in sorted(kinds, key=lambda r: (kinds[r] != HUMAN, r)):
        agreement = wilson_interval(matches.get(rater, 0), len(mine.get(rater, [])))
        own = rater in pool
        others = wilson_interval(
            pool_matches - (matches.get(rater, 0) if own else 0) + correction_matches[rater],
            pool_pairs - (len(mine.get(rater, [])) if own else 0) + correction_pairs[rater],
        )
        left_share = wilson_interval(left[rater], decisive[rater])
        consistency = wilson_interval(same[rater], repeats[rater])
        report.append(
            RaterQuality(
                rater=rater,
                kind=kinds[rater],
                votes=counts[rater],
                decisive=decisive[rater],
                agreement=agreement,
                kappa=cohen_kappa(mine.get(rater, []), theirs.get(rater, [])),
                left_share=left_share,
                self_consistency=consistency,
                reasons=_reasons(agreement, others, left_share, consistency),
                excluded=rater in exclude,
            )
        )
    return report


def _reasons(agreement: Estimate, others: Estimate, left_share: Estimate, consistency: Estimate) -> tuple[str, ...]:
    """The outlier rules (see the constants above), each broken one as a sentence."""
    reasons = []
    if agreement.n >= MIN_SHARED_PAIRS and others.n and agreement.high < others.low:
        reasons.append(
            f"Agrees with the other raters' majority on {agreement.value:.0%} of {agreement.n} shared pairs "
            f"(95% interval {agreement.low:.0%}–{agreement.high:.0%}), below the other raters' "
            f"{others.value:.0%} ({others.low:.0%}–{others.high:.0%})."
        )
    if (
        left_share.n >= MIN_DECISIVE_FOR_SIDE
        and not left_share.low <= 0.5 <= left_share.high
        and abs(left_share.value - 0.5) > SIDE_MARGIN
    ):
        side = "left" if left_share.value > 0.5 else "right"
        share = left_share.value if side == "left" else 1 - left_share.value
        reasons.append(
            f"Chose the {side} side in {share:.0%} of {left_share.n} decisive votes, although sides are drawn "
            "at random: a position bias."
        )
    if consistency.n >= MIN_REPEATS and consistency.high < MIN_CONSISTENCY:
        reasons.append(
            f"Gave the same verdict as the first time on only {consistency.value:.0%} of {consistency.n} "
            f"repeated pairs (95% interval {consistency.low:.0%}–{consistency.high:.0%})."
        )
    return tuple(reasons)


def judge_human_agreement(votes: Sequence[RaterVote], exclude: Collection[str] = ()) -> list[JudgeAgreement]:
    """Per judge (by name): Cohen's kappa and agreement between its verdicts and the human majority.

    Only first showings count; humans in ``exclude`` are left out of the majority. Judges
    in ``exclude`` still get a row (a page shows them as excluded).
    """
    by_pair = _by_pair(_first_showings(votes))
    kinds = {v.rater: v.kind for v in votes}
    judges = sorted(r for r, kind in kinds.items() if kind == JUDGE)
    out = []
    for judge in judges:
        mine: list[Hashable] = []
        majority: list[Hashable] = []
        split = 0
        for verdicts in by_pair.values():
            if judge not in verdicts:
                continue
            humans = [v for r, v in verdicts.items() if kinds[r] == HUMAN and r not in exclude]
            if not humans:
                continue
            top = _majority(humans)
            if top is None:
                split += 1
                continue
            mine.append(verdicts[judge])
            majority.append(top)
        agreed = sum(a == b for a, b in zip(mine, majority, strict=True))
        out.append(
            JudgeAgreement(judge, len(mine), cohen_kappa(mine, majority), wilson_interval(agreed, len(mine)), split)
        )
    return out
