"""Pairwise-preference statistics: Bradley–Terry ratings, win rates, rater agreement.

Bradley–Terry is fitted as Chatbot Arena does: P(i beats j) = 1 / (1 + 10^((R_j − R_i)/400)),
maximum likelihood (a logistic regression without intercept), a tie counted as half a
win each way, ratings centred at 1000, and 95% intervals from the 2.5/97.5 percentiles
of a seeded bootstrap over votes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
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


def fit_bradley_terry(battles: Sequence[Battle], players: Sequence[str], ridge: float = 1e-8) -> dict[str, float]:
    """Maximum-likelihood ratings (Newton's method on the logistic log-likelihood).

    ``ridge`` is a vanishing L2 term that only keeps the fit finite when a player won
    or lost every battle (where the exact MLE is infinite).
    """
    index = {p: i for i, p in enumerate(players)}
    k = len(players)
    if k == 0:
        return {}
    rows, targets, weights = [], [], []
    for b in battles:
        # A tie is half a win each way: two rows of weight 0.5.
        for target, weight in ((1.0, b.outcome), (0.0, 1.0 - b.outcome)):
            if weight > 0:
                x = np.zeros(k)
                x[index[b.first]] += math.log(BASE)
                x[index[b.second]] -= math.log(BASE)
                rows.append(x)
                targets.append(target)
                weights.append(weight)
    if not rows:
        return dict.fromkeys(players, CENTRE)
    x_mat, y, w = np.array(rows), np.array(targets), np.array(weights)
    beta = np.zeros(k)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x_mat @ beta)))
        gradient = x_mat.T @ (w * (y - p)) - ridge * beta
        hessian = (x_mat * (w * p * (1 - p))[:, None]).T @ x_mat + ridge * np.eye(k)
        step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    ratings = SCALE * beta
    ratings += CENTRE - ratings.mean()
    return {p: float(ratings[index[p]]) for p in players}


def bradley_terry_with_intervals(
    battles: Sequence[Battle], players: Sequence[str], rounds: int = 1000, seed: int = 0
) -> list[Rating]:
    point = fit_bradley_terry(battles, players)
    counts = Counter(p for b in battles for p in (b.first, b.second))
    decisive = Counter(p for b in battles if b.outcome in (0.0, 1.0) for p in (b.first, b.second))
    rng = np.random.default_rng(seed)
    samples = []
    if battles:
        for _ in range(rounds):
            picks = rng.integers(0, len(battles), size=len(battles))
            fitted = fit_bradley_terry([battles[i] for i in picks], players)
            samples.append([fitted[p] for p in players])
    table = np.array(samples) if samples else np.full((1, len(players)), CENTRE)
    lows, highs = np.percentile(table, 2.5, axis=0), np.percentile(table, 97.5, axis=0)
    # A player with no battles has no rating to speak of (its fitted value is only the centre).
    return [
        Rating(p, point[p], float(lows[i]), float(highs[i]), counts[p], decisive[p])
        if counts.get(p, 0)
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
