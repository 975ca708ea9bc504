"""Every figure Compare shows, as plain data for the JSON export (the HTML report shows the same)."""

from __future__ import annotations

import math
from typing import Any

from engine.ranking import Rating
from engine.stats import Estimate, PairedDifference
from service.comparison import Comparison, WinRate


def comparison_data(c: Comparison) -> dict[str, Any]:
    """Win rates, ratings (raw and length-controlled), position bias, agreement, verdicts, raters, judges and
    null arms: each figure with its sample size and 95% interval."""
    lc = c.length_controlled
    return {
        "votes": c.votes,
        "raters": c.raters,
        "judge_votes": c.judge_votes,
        "excluded_raters": list(c.excluded_raters),
        "statistics": c.statistics.to_dict(full=True),
        "verdicts": c.decisions.to_data() if c.decisions is not None else None,
        "win_rates": [_win_rate(w) for w in c.pairwise],
        "bradley_terry": [_rating(r) for r in c.bradley_terry],
        "length_controlled": None
        if lc is None
        else {
            "ratings": [_rating(r) for r in lc.controlled],
            "length_coefficient": _estimate(lc.coefficient),
            "length_spread": _num(lc.length_spread),
            "summary": lc.describe(),
        },
        "position_bias": {"left_side_share": _estimate(c.left_wins), "unit": "decisive votes"},
        "agreement": {
            "statistic": c.agreement.statistic,
            "value": _num(c.agreement.value),
            "shared_pairs": c.agreement.items,
            "raters": c.agreement.raters,
            "rated_pairs": c.agreement.rated_pairs,
        },
        "judge_human_agreement": [
            {
                "judge": a.judge,
                "pairs": a.pairs,
                "cohen_kappa": _num(a.kappa),
                "agreement": _estimate(a.agreement),
                "split_pairs": a.split_pairs,
            }
            for a in c.judge_agreement
        ],
        "raters_quality": [
            {
                "rater": r.rater,
                "kind": r.kind,
                "votes": r.votes,
                "decisive": r.decisive,
                "agreement_with_others": _estimate(r.agreement),
                "kappa_with_others": _num(r.kappa),
                "left_side_share": _estimate(r.left_share),
                "self_consistency": _estimate(r.self_consistency),
                "flags": list(r.reasons),
                "excluded": r.excluded,
            }
            for r in c.rater_quality
        ],
        "null_arms": [
            {
                "variant": r.variant,
                "arm": r.arm,
                "arm_variant": r.arm_variant,
                "scores_real_minus_arm": {k: _difference(d) for k, d in r.scores.items()},
                "votes": {
                    kind: {
                        "wins": v.wins,
                        "losses": v.losses,
                        "ties": v.ties,
                        "both_bad": v.both_bad,
                        "win_rate": _estimate(v.estimate),
                        "verdict": v.verdict(),
                    }
                    for kind, v in r.votes.items()
                },
            }
            for r in c.null_arms
        ],
    }


def _num(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _estimate(e: Estimate) -> dict[str, Any]:
    return {"value": _num(e.value), "ci95": [_num(e.low), _num(e.high)], "n": e.n}


def _difference(d: PairedDifference) -> dict[str, Any]:
    return {
        "difference": _num(d.value),
        "ci95": [_num(d.low), _num(d.high)],
        "prompts": d.prompts,
        "pairs": d.pairs,
        "p_value": _num(d.p_value),
    }


def _rating(r: Rating) -> dict[str, Any]:
    return {
        "variant": r.player,
        "rating": _num(r.rating),
        "ci95": [_num(r.low), _num(r.high)] if r.enough_votes else None,
        "decisive_battles": r.decisive,
        "battles": r.battles,
        "needs_more_votes": r.needs_more_votes,
    }


def _win_rate(w: WinRate) -> dict[str, Any]:
    return {
        "variant": w.variant,
        "opponent": w.opponent,
        "wins": w.wins,
        "losses": w.losses,
        "ties": w.ties,
        "both_bad": w.both_bad,
        "win_rate": _estimate(w.estimate),
        "enough_votes": w.enough_votes,
    }
