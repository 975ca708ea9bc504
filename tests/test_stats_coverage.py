"""Do the score intervals hold their stated 95%? Simulated experiments with a known truth.

Each experiment has P prompts x 3 samples; a generation's score is a prompt effect (shared
by the prompt's samples, so they are not independent) plus a per-sample term. Three shapes:
normal; exponential (prompt effect and sample term both Exp(1)); log-normal (prompt effect
LogNormal(0, 0.5) times a sample factor LogNormal(0, 0.25)), each with a known mean. For
2,000 experiments per setting the share of intervals containing the true mean must lie in
[93%, 97%]: the Monte-Carlo standard error of a share near 95% is 0.5%, so a correct 95%
interval passes and one that really covers 91% (the old bootstrap) does not.

The paired difference is checked the same way on (prompt, sample)-matched variant and
baseline scores whose difference has those shapes; the baseline carries its own large prompt
and sample noise, which pairing must cancel.

Measured (seed 12), prompt_mean / paired_difference at 10, 30, 100 prompts: normal 94.5 /
94.6%, 95.4 / 94.8%, 94.9 / 94.9%; exponential 94.5 / 94.2%, 94.4 / 93.9%, 94.7 / 94.1%;
log-normal 93.9 / 93.9%, 95.1 / 94.5%, 94.7 / 95.0%. The old cluster bootstrap at 10 prompts
covers 89.6% (normal), 88.7% (exponential) and 87.4% (log-normal); a plain t-interval without
Hall's skewness correction 92.0% (log-normal, 10 prompts).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats as scipy_stats

from engine.stats import bootstrap_mean, paired_difference, prompt_mean, sign_flip_p_value, skew_corrected_mean

EXPERIMENTS = 2000
SAMPLES = 3
SEED = 12

Shape = Callable[[np.random.Generator, int], tuple[np.ndarray, float]]


def normal(rng: np.random.Generator, prompts: int) -> tuple[np.ndarray, float]:
    scores = rng.normal(0.0, 1.0, (EXPERIMENTS, prompts, 1)) + rng.normal(0.0, 1.0, (EXPERIMENTS, prompts, SAMPLES))
    return scores, 0.0


def exponential(rng: np.random.Generator, prompts: int) -> tuple[np.ndarray, float]:
    scores = rng.exponential(1.0, (EXPERIMENTS, prompts, 1)) + rng.exponential(1.0, (EXPERIMENTS, prompts, SAMPLES))
    return scores, 2.0


def log_normal(rng: np.random.Generator, prompts: int) -> tuple[np.ndarray, float]:
    scores = rng.lognormal(0.0, 0.5, (EXPERIMENTS, prompts, 1)) * rng.lognormal(
        0.0, 0.25, (EXPERIMENTS, prompts, SAMPLES)
    )
    return scores, math.exp(0.5**2 / 2 + 0.25**2 / 2)


SHAPES: dict[str, Shape] = {"normal": normal, "exponential": exponential, "log-normal": log_normal}


def _rng(shape: str, prompts: int, what: str) -> np.random.Generator:
    return np.random.default_rng([SEED, list(SHAPES).index(shape), prompts, len(what)])


def _covered(low: float, high: float, truth: float) -> bool:
    return low <= truth <= high


@pytest.mark.parametrize("prompts", [10, 30, 100])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_prompt_mean_interval_covers_the_true_mean(shape: str, prompts: int) -> None:
    scores, truth = SHAPES[shape](_rng(shape, prompts, "mean"), prompts)
    labels = np.repeat(np.arange(prompts), SAMPLES).tolist()
    hits = 0
    for experiment in scores.reshape(EXPERIMENTS, -1):
        e = prompt_mean(experiment.tolist(), labels)
        assert e.prompts == prompts and e.generations == prompts * SAMPLES
        hits += _covered(e.low, e.high, truth)
    assert 0.93 <= hits / EXPERIMENTS <= 0.97, f"{shape}, {prompts} prompts: covered {hits / EXPERIMENTS:.3f}"


@pytest.mark.parametrize("prompts", [10, 30, 100])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_paired_difference_interval_covers_the_true_difference(shape: str, prompts: int) -> None:
    rng = _rng(shape, prompts, "paired")
    differences, truth = SHAPES[shape](rng, prompts)
    # The baseline's own prompt and sample noise (sd 3) is shared by both sides of each row.
    baseline = 5.0 + rng.normal(0, 3.0, (EXPERIMENTS, prompts, 1)) + rng.normal(0, 3.0, differences.shape)
    variant = baseline + differences
    keys = [(p, s) for p in range(prompts) for s in range(SAMPLES)]
    hits = 0
    for v, b in zip(variant.reshape(EXPERIMENTS, -1), baseline.reshape(EXPERIMENTS, -1), strict=True):
        d = paired_difference(dict(zip(keys, v.tolist(), strict=True)), dict(zip(keys, b.tolist(), strict=True)))
        assert d.prompts == prompts and d.pairs == prompts * SAMPLES
        hits += _covered(d.low, d.high, truth)
    assert 0.93 <= hits / EXPERIMENTS <= 0.97, f"{shape}, {prompts} prompts: covered {hits / EXPERIMENTS:.3f}"


@pytest.mark.parametrize(("shape", "below"), [("normal", 0.93), ("exponential", 0.90), ("log-normal", 0.90)])
def test_the_cluster_bootstrap_this_replaced_under_covers_at_10_prompts(shape: str, below: float) -> None:
    """Why the intervals changed: resampling 10 prompts gives intervals too narrow by about
    sqrt(9/10) and blind to skew (issue 12 measured ~90% normal, ~75% for a heavier skew)."""
    scores, truth = SHAPES[shape](_rng(shape, 10, "mean"), 10)
    labels = np.repeat(np.arange(10), SAMPLES).tolist()
    covered = np.mean(
        [
            _covered((e := bootstrap_mean(x.tolist(), clusters=labels, rounds=1000, seed=i)).low, e.high, truth)
            for i, x in enumerate(scores.reshape(EXPERIMENTS, -1))
        ]
    )
    assert covered < below, f"the bootstrap covered {covered:.3f}"


def test_a_plain_t_interval_misses_skewed_scores_at_10_prompts() -> None:
    """Why the interval corrects for skew: the same experiments, plain t-interval over prompt means."""
    scores, truth = log_normal(_rng("log-normal", 10, "mean"), 10)
    means = scores.mean(axis=2)
    half = scipy_stats.t.ppf(0.975, 9) * means.std(axis=1, ddof=1) / math.sqrt(10)
    centre = means.mean(axis=1)
    covered = np.mean((centre - half <= truth) & (truth <= centre + half))
    assert covered < 0.93, f"the plain t-interval covered {covered:.3f}"


def _sign_flip_p_values(units: np.ndarray) -> np.ndarray:
    """engine.stats.sign_flip_p_value for many rows at once (exact: every sign pattern), for simulation."""
    n = units.shape[1]
    patterns = 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    out = []
    for chunk in np.array_split(units, max(1, len(units) // 2000)):
        observed = np.abs(chunk.mean(axis=1))[:, None]
        means = np.abs(chunk @ patterns.T) / n
        out.append(np.mean(means >= observed * (1 - 1e-12) - 1e-15, axis=1))
    return np.concatenate(out)


def test_score_tests_keep_their_level_at_the_small_alphas_a_correction_uses() -> None:
    # Holm over 24 comparisons tests the strongest at alpha / 24. Under "no effect", 10 prompts of
    # per-prompt differences (normal, and log-normal noise made symmetric by a random sign: exchangeable).
    rng = np.random.default_rng(24)
    level, sims, n = 0.05 / 24, 20_000, 10
    normal = rng.normal(size=(sims, n))
    skewed = rng.lognormal(0.0, 1.0, size=(sims, n)) * rng.choice([-1.0, 1.0], size=(sims, n))
    for units in (normal, skewed):
        rate = float(np.mean(_sign_flip_p_values(units) <= level))
        assert rate <= level + 3 * math.sqrt(level / sims), rate
    assert sign_flip_p_value(normal[0]) == pytest.approx(_sign_flip_p_values(normal[:1])[0])
    # Hall's skewness-corrected t (the intervals' test) does not hold that level on heavy tails
    # (0.0035 here, against 0.0021): why verdicts on scores use the sign-flip test.
    hall = np.array([skew_corrected_mean(u).p_value for u in skewed])
    assert float(np.mean(hall <= level)) > 1.5 * level
