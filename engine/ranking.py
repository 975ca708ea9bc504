"""Pairwise-preference statistics: Bradley–Terry ratings, win rates, rater agreement.

Bradley–Terry is fitted as Chatbot Arena does: P(i beats j) = 1 / (1 + 10^((R_j − R_i)/400)),
maximum likelihood (a logistic regression without intercept), a tie counted as half a
win each way, ratings centred at 1000, and 95% intervals from the 2.5/97.5 percentiles
of a seeded bootstrap over votes. The fit and the bootstrap work on aggregated counts of
(pair of players, outcome), which gives the same likelihood as one row per vote.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SCALE = 400.0
BASE = 10.0
CENTRE = 1000.0

# A variant's rating is shown only from this many decisive battles (won or lost, against any
# other variant; ties and both-bad votes do not count). With fewer, the maximum-likelihood
# fit is dominated by a handful of outcomes (a variant that won its 3 battles gets an
# arbitrarily high rating) and the bootstrap interval spans thousands of points, e.g.
# 1665 [−3962, 8189] from 14 votes: pages say "too few votes (n=…)" instead of a number.
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
    rating: float
    low: float
    high: float
    battles: int  # every battle of the player, ties included
    decisive: int = 0  # battles the player won or lost

    @property
    def enough_votes(self) -> bool:
        """Whether the rating rests on enough decisive battles to be shown (see MIN_DECISIVE_BATTLES)."""
        return self.decisive >= MIN_DECISIVE_BATTLES and math.isfinite(self.rating)


# (first player, second player, outcome) -> how many battles ended so: the sufficient
# statistics of the Bradley–Terry likelihood, so 50,000 votes between 20 players fit as
# a few hundred weighted rows (FastChat's Chatbot Arena aggregates the same way).
BattleCounts = Mapping[tuple[str, str, float], int]


def count_battles(battles: Iterable[Battle]) -> Counter[tuple[str, str, float]]:
    return Counter((b.first, b.second, b.outcome) for b in battles)


def fit_bradley_terry(battles: Sequence[Battle], players: Sequence[str], ridge: float = 1e-8) -> dict[str, float]:
    """Maximum-likelihood ratings (Newton's method on the logistic log-likelihood).

    ``ridge`` is a vanishing L2 term that only keeps the fit finite when a player won
    or lost every battle (where the exact MLE is infinite).
    """
    return fit_bradley_terry_counts(count_battles(battles), players, ridge)


def fit_bradley_terry_counts(counts: BattleCounts, players: Sequence[str], ridge: float = 1e-8) -> dict[str, float]:
    """The same fit from aggregated battle counts (identical likelihood, a row per pair of players)."""
    if not players:
        return {}
    design = _Design(counts, players)
    if not design.keys:
        return dict.fromkeys(players, CENTRE)
    ratings = _centred(design.fit(design.counts[None, :], ridge)[0])
    return {p: float(ratings[i]) for i, p in enumerate(players)}


class _Design:
    """Battle outcomes (first, second, outcome) as rows over unordered pairs of players.

    A pair's likelihood needs only the total weight of the lower-indexed player's wins and
    of its losses (a tie is half of each), so any resample of the battle counts maps to
    those weights through one matrix product.
    """

    def __init__(self, counts: BattleCounts, players: Sequence[str]) -> None:
        index = {p: i for i, p in enumerate(players)}
        self.k = len(players)
        # "b beat a" is "a lost to b": one kind of battle, so a resample draws from fewer kinds
        # (counts of merged kinds are again multinomial: the bootstrap is unchanged).
        merged: Counter[tuple[str, str, float]] = Counter()
        for (first, second, outcome), n in counts.items():
            if n > 0:
                swap = index[first] > index[second]
                merged[(second, first, 1.0 - outcome) if swap else (first, second, outcome)] += n
        self.keys = list(merged)
        self.counts = np.array([merged[key] for key in self.keys], dtype=float)
        pairs: dict[tuple[int, int], int] = {}
        wins_rows, loss_rows = [], []
        for first, second, outcome in self.keys:
            i, j = index[first], index[second]
            low, high = min(i, j), max(i, j)
            row = pairs.setdefault((low, high), len(pairs))
            won = outcome if i == low else 1.0 - outcome  # the lower-indexed player's share of the win
            wins_rows.append((row, won))
            loss_rows.append((row, 1.0 - won))
        self.pairs = list(pairs)
        m = len(self.pairs)
        # (battle kinds) x (pairs): how much one battle of a kind adds to a pair's wins and losses.
        self.to_wins = np.zeros((len(self.keys), m))
        self.to_losses = np.zeros((len(self.keys), m))
        for kind, ((row, won), (_, lost)) in enumerate(zip(wins_rows, loss_rows, strict=True)):
            self.to_wins[kind, row] = won
            self.to_losses[kind, row] = lost
        self.x = np.zeros((m, self.k))
        for row, (low, high) in enumerate(self.pairs):
            self.x[row, low] = math.log(BASE)
            self.x[row, high] = -math.log(BASE)
        self.outer = np.einsum("mk,ml->mkl", self.x, self.x).reshape(m, self.k * self.k)

    def fit(self, resampled: np.ndarray, ridge: float) -> np.ndarray:
        """Ratings (before centring) for each row of ``resampled`` battle counts: Newton, batched."""
        wins, losses = resampled @ self.to_wins, resampled @ self.to_losses
        totals = wins + losses
        rounds = resampled.shape[0]
        beta = np.zeros((rounds, self.k))
        active = np.arange(rounds)
        # The likelihood does not change when every rating moves by the same amount; the
        # last term pins the mean at 0 (where the ridge's optimum lies anyway), so each
        # Newton system is well conditioned and steps do not wander along that direction.
        eye = ridge * np.eye(self.k) + np.ones((self.k, self.k))
        for _ in range(100):
            b = beta[active]
            p = 1.0 / (1.0 + np.exp(-(b @ self.x.T)))
            gradient = (wins[active] - totals[active] * p) @ self.x - ridge * b - b.sum(axis=1, keepdims=True)
            weight = totals[active] * p * (1 - p)
            hessian = (weight @ self.outer).reshape(len(active), self.k, self.k) + eye
            try:
                step = np.linalg.solve(hessian, gradient[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                step = np.stack([np.linalg.lstsq(h, g, rcond=None)[0] for h, g in zip(hessian, gradient, strict=True)])
            beta[active] = b + step
            active = active[np.abs(step).max(axis=1) >= 1e-10]
            if not len(active):
                break
        return SCALE * beta


def _centred(ratings: np.ndarray) -> np.ndarray:
    return ratings + (CENTRE - ratings.mean(axis=-1, keepdims=True))


def bradley_terry_with_intervals(
    battles: Sequence[Battle], players: Sequence[str], rounds: int = 1000, seed: int = 0
) -> list[Rating]:
    return bradley_terry_from_counts(count_battles(battles), players, rounds, seed)


def bradley_terry_from_counts(
    counts: BattleCounts, players: Sequence[str], rounds: int = 1000, seed: int = 0
) -> list[Rating]:
    """Ratings with 95% intervals from a seeded bootstrap over votes.

    Resampling n votes with replacement is drawing the counts of each (pair, outcome)
    from a multinomial with the observed shares, so each round is one draw and one
    small fit, not a fit over n rows.
    """
    point = fit_bradley_terry_counts(counts, players)
    battles: Counter[str] = Counter()
    decisive: Counter[str] = Counter()
    for (first, second, outcome), n in counts.items():
        for p in (first, second):
            battles[p] += n
            if outcome in (0.0, 1.0):
                decisive[p] += n
    design = _Design(counts, players)
    total = int(design.counts.sum())
    if total and players:
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(total, design.counts / total, size=rounds).astype(float)
        table = _centred(design.fit(draws, 1e-8))
    else:
        table = np.full((1, len(players)), CENTRE)
    lows, highs = np.percentile(table, 2.5, axis=0), np.percentile(table, 97.5, axis=0)
    # A player with no battles has no rating to speak of (its fitted value is only the centre).
    return [
        Rating(p, point[p], float(lows[i]), float(highs[i]), battles[p], decisive[p])
        if battles.get(p, 0)
        else Rating(p, math.nan, math.nan, math.nan, 0)
        for i, p in enumerate(players)
    ]


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
