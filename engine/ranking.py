"""Pairwise-preference statistics: Bradley–Terry ratings (plain and length-controlled), rater agreement.

Bradley–Terry on Chatbot Arena's scale: P(i beats j) = 1 / (1 + 10^((R_j − R_i)/400)), a tie
counted as half a win each way. The ratings are the posterior mode under a weak Gaussian prior,
N(1000, PRIOR_SD²) on each rating (see PRIOR_SD): a logistic regression without intercept with an
L2 penalty of stated size, so a variant that won its only vote gets a finite rating rather than
an infinite one, while ratings from many votes are the maximum-likelihood ones to within a few
points. 95% intervals are the 2.5/97.5 percentiles of a seeded bootstrap over votes, each
resample fitted with the same prior. The fit and the bootstrap work on aggregated counts of
(pair of players, outcome), which gives the same likelihood as one row per vote.

Length control follows FastChat's ``compute_style_control``: one more regressor, the two
outputs' normalised length difference, so the ratings are read "at equal length" and the
regressor's coefficient says how much raters favour the longer output.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import SteerLabError
from engine.stats import Estimate

SCALE = 400.0
BASE = 10.0
CENTRE = 1000.0
LN_BASE = math.log(BASE)

# The prior's standard deviation of each rating, in rating points. 400 points is one decade of
# odds, so the prior puts 95% of variants within ±800 points of the average (odds up to 100:1
# against an average variant): wide enough for a broken steering coefficient that loses nearly
# every vote, yet it keeps one vote from meaning "infinitely better" (one win: a gap of about
# 290 points, not ±3,000 or more). Its weight is that of about one vote per variant: n decisive
# votes between two variants carry Fisher information n·p(1−p)·ln(10)² ≈ 1.3·n (at p = 0.5, in
# units of 400 points) against the prior's 0.5 on the gap, so from 20 votes on the prior moves a
# gap by about 2%. ``prior_sd=math.inf`` gives the maximum-likelihood fit.
PRIOR_SD = 400.0

# Only where the caller asks for the maximum-likelihood fit (no prior): a vanishing L2 term that
# keeps ratings finite when a player won or lost every battle (where the exact MLE is infinite).
_MLE_RIDGE = 1e-8

# A variant's rating is labelled "needs more votes" below this many decisive battles (won or
# lost, against any other variant; ties and both-bad votes do not count). The prior keeps such a
# rating finite and shown, but it rests mostly on the prior: with 3 of 3 battles won it is
# about 1,250, and its interval spans hundreds of points. Callers may pass another minimum
# (an experiment's ``statistics.min_votes``).
MIN_DECISIVE_BATTLES = 10


@dataclass(frozen=True)
class Battle:
    """One decisive-or-tied vote between two players (both-bad votes are left out)."""

    first: str
    second: str
    outcome: float  # 1.0 first won, 0.0 second won, 0.5 tie


@dataclass(frozen=True)
class Rating:
    player: str
    rating: float  # NaN for a player without battles: it has no rating to speak of
    low: float
    high: float
    battles: int  # every battle of the player, ties included
    decisive: int = 0  # battles the player won or lost
    min_decisive: int = MIN_DECISIVE_BATTLES  # below this the rating is labelled "needs more votes"

    @property
    def enough_votes(self) -> bool:
        """Whether the rating rests on at least ``min_decisive`` decisive battles."""
        return self.decisive >= self.min_decisive and math.isfinite(self.rating)

    @property
    def needs_more_votes(self) -> bool:
        """A rating shown with the label "needs more votes" (or, without battles, not at all)."""
        return not self.enough_votes

    def describe(self) -> str:
        """The rating with its interval, and the label when it rests on too few decisive battles."""
        if not math.isfinite(self.rating):
            return f"no votes yet (needs {self.min_decisive} decisive battles)"
        text = f"{self.rating:.0f} [{self.low:.0f}, {self.high:.0f}]"
        if self.needs_more_votes:
            text += f" (needs more votes: {self.decisive} of {self.min_decisive} decisive battles)"
        return text


# (first player, second player, outcome) -> how many battles ended so: the sufficient
# statistics of the Bradley–Terry likelihood, so 50,000 votes between 20 players fit as
# a few hundred weighted rows (FastChat's Chatbot Arena aggregates the same way).
BattleCounts = Mapping[tuple[str, str, float], int]

# (first, second, outcome, first's tokens, second's tokens) -> battles: the same with the two
# outputs' lengths, for length-controlled ratings.
LengthCounts = Mapping[tuple[str, str, float, int, int], int]


def count_battles(battles: Iterable[Battle]) -> Counter[tuple[str, str, float]]:
    return Counter((b.first, b.second, b.outcome) for b in battles)


def fit_bradley_terry(
    battles: Sequence[Battle], players: Sequence[str], prior_sd: float = PRIOR_SD
) -> dict[str, float]:
    """Posterior-mode ratings (Newton's method) under the N(CENTRE, prior_sd²) prior on each rating."""
    return fit_bradley_terry_counts(count_battles(battles), players, prior_sd)


def fit_bradley_terry_counts(
    counts: BattleCounts, players: Sequence[str], prior_sd: float = PRIOR_SD
) -> dict[str, float]:
    """The same fit from aggregated battle counts (identical likelihood, a row per pair of players)."""
    if not players:
        return {}
    design = _Design(_with_feature(counts), players, with_feature=False)
    if not design.keys:
        return dict.fromkeys(players, CENTRE)
    ratings = _centred(design.fit(design.counts[None, :], prior_sd)[0][: len(players)])
    return {p: float(ratings[i]) for i, p in enumerate(players)}


def _with_feature(counts: BattleCounts) -> dict[tuple[str, str, float, float], int]:
    return {(first, second, outcome, 0.0): n for (first, second, outcome), n in counts.items()}


class _Design:
    """Battle kinds (first, second, outcome, feature) grouped into rows over unordered pairs of players.

    A row's likelihood needs only the total weight of the lower-indexed player's wins and of
    its losses (a tie is half of each), so a resample of the battle counts maps to those
    weights by summing runs of kinds. Without the feature a row is a pair of players; with it
    (length control) a row is a pair and a value of the feature. Kinds are sorted by (pair,
    feature, outcome), so each row's kinds and each pair's rows are contiguous runs: the
    Newton steps sum runs (``np.add.reduceat``) instead of multiplying dense matrices, and
    cost grows with the number of rows, not with rows × players².
    """

    def __init__(
        self, counts: Mapping[tuple[str, str, float, float], int], players: Sequence[str], with_feature: bool
    ) -> None:
        index = {p: i for i, p in enumerate(players)}
        self.k = len(players)
        self.width = self.k + (1 if with_feature else 0)
        # "b beat a" is "a lost to b" (and the feature, a difference of the two, changes sign):
        # one kind of battle, so a resample draws from fewer kinds (counts of merged kinds are
        # again multinomial: the bootstrap is unchanged). Sorting makes the draws independent of
        # the order the votes came in, and a design with a zero feature draws exactly as one
        # without it.
        merged: Counter[tuple[int, int, float, float]] = Counter()
        for (first, second, outcome, feature), n in counts.items():
            if n > 0:
                i, j = index[first], index[second]
                merged[(j, i, -feature + 0.0, 1.0 - outcome) if i > j else (i, j, feature, outcome)] += n
        self.keys = sorted(merged)
        self.counts = np.array([merged[key] for key in self.keys], dtype=float)
        # The lower-indexed player's share of the win in one battle of each kind.
        self.won = np.array([outcome for *_, outcome in self.keys])
        rows = list(dict.fromkeys((low, high, feature) for low, high, feature, _ in self.keys))
        self.row_starts = np.array(
            [i for i, key in enumerate(self.keys) if i == 0 or key[:3] != self.keys[i - 1][:3]], dtype=np.intp
        )
        pairs = list(dict.fromkeys((low, high) for low, high, _ in rows))
        pair_index = {pair: i for i, pair in enumerate(pairs)}
        self.row_pair = np.array([pair_index[(low, high)] for low, high, _ in rows], dtype=np.intp)
        self.pair_starts = np.array(
            [i for i, row in enumerate(rows) if i == 0 or row[:2] != rows[i - 1][:2]], dtype=np.intp
        )
        self.feature = np.array([feature for *_, feature in rows]) if with_feature else None
        self.pair_x = np.zeros((len(pairs), self.k))
        for row, (low, high) in enumerate(pairs):
            self.pair_x[row, low] = LN_BASE
            self.pair_x[row, high] = -LN_BASE
        self.pair_outer = np.einsum("mk,ml->mkl", self.pair_x, self.pair_x).reshape(len(pairs), self.k * self.k)
        # The likelihood does not change when every rating moves by the same amount; this term
        # pins the ratings' mean at 0, where the prior's optimum lies anyway (the likelihood's
        # gradient sums to zero over players), so each Newton system is well conditioned.
        self.pin = np.zeros((self.width, self.width))
        self.pin[: self.k, : self.k] = 1.0

    def fit(self, resampled: np.ndarray, prior_sd: float) -> np.ndarray:
        """Parameters for each row of ``resampled`` battle counts: Newton, batched.

        Columns: the k ratings (before centring, in rating points), then, with the feature,
        its coefficient (in logits per unit of the feature).
        """
        wins = np.add.reduceat(resampled * self.won, self.row_starts, axis=1)
        totals = np.add.reduceat(resampled, self.row_starts, axis=1)
        rounds, k, width = resampled.shape[0], self.k, self.width
        prior = np.diag(_prior_precision(prior_sd, k, width)) + self.pin
        beta = np.zeros((rounds, width))
        active = np.arange(rounds)
        for _ in range(100):
            b = beta[active]
            logit = (b[:, :k] @ self.pair_x.T)[:, self.row_pair]
            if self.feature is not None:
                logit += b[:, k:] * self.feature
            p = 1.0 / (1.0 + np.exp(-logit))
            residual = wins[active] - totals[active] * p
            weight = totals[active] * p * (1 - p)
            gradient = np.empty_like(b)
            gradient[:, :k] = np.add.reduceat(residual, self.pair_starts, axis=1) @ self.pair_x
            hessian = np.empty((len(active), width, width))
            pair_weight = np.add.reduceat(weight, self.pair_starts, axis=1)
            hessian[:, :k, :k] = (pair_weight @ self.pair_outer).reshape(len(active), k, k)
            if self.feature is not None:
                gradient[:, k] = residual @ self.feature
                cross = np.add.reduceat(weight * self.feature, self.pair_starts, axis=1) @ self.pair_x
                hessian[:, :k, k] = hessian[:, k, :k] = cross
                hessian[:, k, k] = weight @ self.feature**2
            gradient -= b @ prior
            step = np.linalg.solve(hessian + prior, gradient[:, :, None])[:, :, 0]
            beta[active] = b + step
            active = active[np.abs(step).max(axis=1) >= 1e-10]
            if not len(active):
                break
        beta[:, :k] *= SCALE
        return beta


def _prior_precision(prior_sd: float, k: int, width: int) -> np.ndarray:
    """Prior precision of each parameter in the fit's own units (400 rating points; logits).

    A rating's prior sd is ``prior_sd`` points, ``prior_sd / SCALE`` in the fit's units; the
    length coefficient gets the same spread in logits (ln 10 · prior_sd / SCALE: as large a
    shift of the odds as one rating's prior allows), weak enough that data decide it.
    """
    if not prior_sd > 0:
        raise SteerLabError(
            f"The rating prior's standard deviation is {prior_sd}; give a positive number of rating points."
        )
    rating = max((SCALE / prior_sd) ** 2, _MLE_RIDGE)
    coefficient = max((SCALE / (LN_BASE * prior_sd)) ** 2, _MLE_RIDGE)
    return np.array([rating] * k + [coefficient] * (width - k))


def _centred(ratings: np.ndarray) -> np.ndarray:
    return ratings + (CENTRE - ratings.mean(axis=-1, keepdims=True))


def bradley_terry_with_intervals(
    battles: Sequence[Battle],
    players: Sequence[str],
    rounds: int = 1000,
    seed: int = 0,
    prior_sd: float = PRIOR_SD,
    min_decisive: int = MIN_DECISIVE_BATTLES,
) -> list[Rating]:
    return bradley_terry_from_counts(count_battles(battles), players, rounds, seed, prior_sd, min_decisive)


def bradley_terry_from_counts(
    counts: BattleCounts,
    players: Sequence[str],
    rounds: int = 1000,
    seed: int = 0,
    prior_sd: float = PRIOR_SD,
    min_decisive: int = MIN_DECISIVE_BATTLES,
) -> list[Rating]:
    """Ratings with 95% intervals from a seeded bootstrap over votes.

    Resampling n votes with replacement is drawing the counts of each (pair, outcome)
    from a multinomial with the observed shares, so each round is one draw and one
    small fit, not a fit over n rows.
    """
    design = _Design(_with_feature(counts), players, with_feature=False)
    point = _centred(design.fit(design.counts[None, :], prior_sd)[0]) if design.keys else np.full(len(players), CENTRE)
    table = _bootstrap(design, rounds, seed, prior_sd)[:, : len(players)]
    return _ratings(counts, players, point, table, min_decisive)


def _bootstrap(design: _Design, rounds: int, seed: int, prior_sd: float) -> np.ndarray:
    """Fitted parameters of ``rounds`` resamples (ratings centred); one row of centres without votes."""
    total = int(design.counts.sum())
    if not total or not design.k:
        return np.full((1, design.width), CENTRE)
    rng = np.random.default_rng(seed)
    # Rounds are drawn and fitted in chunks of about _CHUNK_CELLS draws of a kind, so memory stays
    # bounded when length control splits the votes into many kinds.
    chunk = max(1, _CHUNK_CELLS // len(design.keys))
    parts = []
    for start in range(0, rounds, chunk):
        size = min(chunk, rounds - start)
        draws = rng.multinomial(total, design.counts / total, size=size).astype(float)
        parts.append(design.fit(draws, prior_sd))
    table = np.concatenate(parts)
    table[:, : design.k] = _centred(table[:, : design.k])
    return table


_CHUNK_CELLS = 2_000_000


def _ratings(
    counts: BattleCounts, players: Sequence[str], point: np.ndarray, table: np.ndarray, min_decisive: int
) -> list[Rating]:
    battles: Counter[str] = Counter()
    decisive: Counter[str] = Counter()
    for (first, second, outcome), n in counts.items():
        for p in (first, second):
            battles[p] += n
            if outcome in (0.0, 1.0):
                decisive[p] += n
    lows, highs = np.percentile(table, 2.5, axis=0), np.percentile(table, 97.5, axis=0)
    # A player with no battles has no rating to speak of (its fitted value is only the prior's centre).
    return [
        Rating(p, float(point[i]), float(lows[i]), float(highs[i]), battles[p], decisive[p], min_decisive)
        if battles.get(p, 0)
        else Rating(p, math.nan, math.nan, math.nan, 0, 0, min_decisive)
        for i, p in enumerate(players)
    ]


# --- length control -------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthControlled:
    """Raw and length-controlled Bradley–Terry ratings of the same votes, with the length effect.

    ``coefficient`` is in logits per standard unit of the normalised length difference
    (first's tokens − second's) / (sum), scaled by its root mean square ``length_spread`` over
    the votes: positive when raters favour the longer output. Its ``n`` is the number of
    battles whose two outputs differ in length; without any it is not measurable (NaN), and
    the controlled ratings equal the raw ones.
    """

    raw: list[Rating]
    controlled: list[Rating]
    coefficient: Estimate
    length_spread: float

    @property
    def odds_ratio(self) -> Estimate:
        """How many times the odds of winning grow per standard unit of length advantage, with its interval."""
        c = self.coefficient
        return Estimate(math.exp(c.value), math.exp(c.low), math.exp(c.high), c.n)

    def describe(self) -> str:
        """One sentence on the length effect, for a page or the report."""
        c = self.coefficient
        if not c.n or not math.isfinite(c.value):
            return "Length effect not measurable: the rated outputs of every pair have the same length."
        o = self.odds_ratio
        if c.low > 0:
            lead = "Raters favour the longer output"
        elif c.high < 0:
            lead = "Raters favour the shorter output"
        else:
            lead = "No clear length preference"
        return (
            f"{lead}: a length advantage of {self.length_spread:.2f} (length difference over total length) "
            f"multiplies the odds of winning by {o.value:.2f} [{o.low:.2f}, {o.high:.2f}] "
            f"(from {c.n} battles between outputs of different lengths)."
        )


# The normalised length difference is rounded to this step before fitting: votes then fall into
# at most 2/LENGTH_STEP + 1 values per pair of variants and outcome, so 50,000 votes with
# lengths all different still fit as a few thousand weighted rows (a finer step made Compare's cold
# view of 50,000 votes take 0.6 s longer). The rounding error (at most 0.025) is small beside the
# differences steering makes (8 vs 12 tokens is 0.2).
LENGTH_STEP = 0.05


def normalised_length_difference(first_tokens: int, second_tokens: int) -> float:
    """(first − second) / (first + second), in [−1, 1]; 0 when both are empty."""
    total = first_tokens + second_tokens
    return (first_tokens - second_tokens) / total if total > 0 else 0.0


def length_controlled_ratings(
    rows: Iterable[tuple[str, str, float, int, int, int]],
    players: Sequence[str],
    rounds: int = 1000,
    seed: int = 0,
    prior_sd: float = PRIOR_SD,
    min_decisive: int = MIN_DECISIVE_BATTLES,
) -> LengthControlled:
    """Raw and length-controlled ratings from (first, second, outcome, first's tokens, second's tokens, count) rows.

    The controlled fit adds one regressor, the normalised length difference divided by its
    root mean square over the votes. It is not centred (FastChat centres it): the difference
    is antisymmetric, so listing a pair the other way round must give the same fit, and a
    centred one would act as a bonus for whichever side is listed first. Both fits use the
    same prior and the same bootstrap draws, so their intervals differ only by the control.
    """
    lengths: Counter[tuple[str, str, float, float]] = Counter()
    plain: Counter[tuple[str, str, float]] = Counter()
    differing = 0  # battles between outputs of different lengths (before rounding)
    for first, second, outcome, first_tokens, second_tokens, n in rows:
        difference = round(normalised_length_difference(first_tokens, second_tokens) / LENGTH_STEP) * LENGTH_STEP
        lengths[(first, second, outcome, difference + 0.0)] += n
        plain[(first, second, outcome)] += n
        differing += n if first_tokens != second_tokens else 0
    weights = np.array([n for n in lengths.values()], dtype=float)
    values = np.array([key[3] for key in lengths], dtype=float)
    spread = float(np.sqrt((weights * values**2).sum() / weights.sum())) if weights.sum() > 0 else 0.0
    scaled = {(a, b, o, d / spread if spread > 0 else 0.0): n for (a, b, o, d), n in lengths.items()}
    raw = bradley_terry_from_counts(plain, players, rounds, seed, prior_sd, min_decisive)
    design = _Design(scaled, players, with_feature=True)
    if design.keys:
        fitted = design.fit(design.counts[None, :], prior_sd)[0]
        point = np.concatenate([_centred(fitted[: len(players)]), fitted[len(players) :]])
    else:
        point = np.concatenate([np.full(len(players), CENTRE), [0.0]])
    table = _bootstrap(design, rounds, seed, prior_sd)
    controlled = _ratings(plain, players, point, table, min_decisive)
    if differing and spread > 0:
        low, high = np.percentile(table[:, -1], [2.5, 97.5])
        coefficient = Estimate(float(point[-1]), float(low), float(high), differing)
    else:
        coefficient = Estimate(math.nan, math.nan, math.nan, 0)
    return LengthControlled(raw, controlled, coefficient, spread)


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters' labels for the same items."""
    n = len(first)
    if n == 0 or n != len(second):
        return math.nan
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    ca, cb = Counter(first), Counter(second)
    expected = sum(ca[c] * cb[c] for c in set(ca) | set(cb)) / (n * n)
    return math.nan if expected == 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(items: Sequence[Sequence[Hashable]]) -> float:
    """Fleiss' kappa; each item is the list of labels its raters gave.

    Items may have different numbers of raters (at least two each): per-item agreement
    uses that item's count, and category shares are pooled over all labels.
    """
    usable = [list(labels) for labels in items if len(labels) >= 2]
    if not usable:
        return math.nan
    total = Counter(label for labels in usable for label in labels)
    n_labels = sum(total.values())
    agreement = []
    for labels in usable:
        m = len(labels)
        counts = Counter(labels)
        agreement.append((sum(c * c for c in counts.values()) - m) / (m * (m - 1)))
    p_bar = sum(agreement) / len(agreement)
    p_e = sum((c / n_labels) ** 2 for c in total.values())
    return math.nan if p_e == 1 else (p_bar - p_e) / (1 - p_e)
