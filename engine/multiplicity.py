"""Corrections for looking at many comparisons at once (variants x metrics).

With ten comparisons at alpha 0.05, the chance that at least one equal pair looks
"significant" is about 40%. The adjusted p-values here are compared with the same alpha:

- Holm (1979), step-down, controls the family-wise error rate (the chance of any false
  positive) under any dependence: sort the m p-values ascending, p_(i) becomes
  max over j <= i of min(1, (m - j + 1) p_(j)).
- Benjamini–Hochberg (1995), step-up, controls the false discovery rate (the expected share of
  false positives among the comparisons called significant) for independent or positively
  dependent tests: p_(i) becomes min over j >= i of min(1, m p_(j) / j).

A NaN p-value (a comparison without data yet) stays NaN and does not count in m: a comparison
with nothing to test cannot produce a false positive.

References: S. Holm, "A simple sequentially rejective multiple test procedure", Scand. J.
Statist. 6 (1979); Y. Benjamini and Y. Hochberg, "Controlling the false discovery rate",
JRSS B 57 (1995).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from engine.errors import SteerLabError

CorrectionMethod = Literal["holm", "benjamini_hochberg"]
CORRECTION_METHODS: tuple[CorrectionMethod, ...] = ("holm", "benjamini_hochberg")
CORRECTION_NAMES: dict[CorrectionMethod, str] = {"holm": "Holm", "benjamini_hochberg": "Benjamini–Hochberg"}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order (monotone in the raw p-values, at most 1)."""
    p, finite = _checked(p_values)
    m = len(p)
    if m:
        order = np.argsort(p, kind="stable")
        scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
        p[order] = np.maximum.accumulate(scaled)
    return _placed(p, finite, len(p_values))


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg step-up adjusted p-values (q-values), in the input's order, at most 1."""
    p, finite = _checked(p_values)
    m = len(p)
    if m:
        order = np.argsort(p, kind="stable")
        scaled = np.minimum(1.0, m * p[order] / np.arange(1, m + 1))
        p[order] = np.minimum.accumulate(scaled[::-1])[::-1]
    return _placed(p, finite, len(p_values))


def adjust(p_values: Sequence[float], method: CorrectionMethod) -> list[float]:
    """The p-values adjusted by ``method`` ("holm" or "benjamini_hochberg")."""
    if method == "holm":
        return holm(p_values)
    if method == "benjamini_hochberg":
        return benjamini_hochberg(p_values)
    raise SteerLabError(f"The correction {method!r} is not known: use one of {', '.join(CORRECTION_METHODS)}.")


def family_size(p_values: Sequence[float]) -> int:
    """m: how many of the p-values count in a correction (the finite ones)."""
    return sum(1 for p in p_values if math.isfinite(p))


def _checked(p_values: Sequence[float]) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    values = np.asarray(list(p_values), dtype=float)
    finite = np.isfinite(values)
    bad = values[finite & ((values < 0.0) | (values > 1.0))]
    if bad.size:
        raise SteerLabError(f"The p-value {float(bad[0])!r} is not between 0 and 1: p-values are probabilities.")
    return values[finite].copy(), finite


def _placed(adjusted: NDArray[np.float64], finite: NDArray[np.bool_], size: int) -> list[float]:
    out = np.full(size, math.nan)
    out[finite] = adjusted
    return [float(x) for x in out]
