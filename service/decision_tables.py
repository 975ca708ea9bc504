"""Tables of verdicts, raters and null arms, as Compare and the HTML report show them.

Every row keeps its sample size next to its figure, and p-values appear raw and adjusted
side by side, so a reader sees what the correction did.
"""

from __future__ import annotations

import math

import pandas as pd

from engine.rater_quality import RaterQuality
from engine.stats import Estimate, PairedDifference
from service.comparison import Comparison
from service.decisions import Decision, describe_p
from service.null_arms import NullArmResult, score_verdict


def verdict_label(d: Decision) -> str:
    """The verdict in a word or three; "keep rating" is "add prompts" for a score (more prompts, not votes)."""
    if d.label == "keep rating" and d.score is not None:
        return "add prompts"
    return d.label


def decisions_table(decisions: list[Decision], corrected: bool = True) -> pd.DataFrame:
    """One row per comparison: verdict, figure with its interval, always-valid interval, n, p-values, sample needed."""
    rows = []
    for d in decisions:
        raw, adjusted = describe_p(d)
        row = {
            "variant": d.variant,
            "against": d.opponent,
            "measure": d.metric,
            "better when": "it wins more"
            if d.votes is not None
            else ("higher" if d.score is not None and d.score.higher_is_better else "lower"),
            "verdict": verdict_label(d),
            "estimate [95% CI]": d.estimate(),
            "always-valid 95%": d.always_valid(),
            "n": d.sample(),
            "p (raw)": raw,
        }
        if corrected:
            row["p (adjusted)"] = adjusted
        row["needed for power"] = d.needed()
        row["why"] = d.sentence
        rows.append(row)
    return pd.DataFrame(rows)


def _share(e: Estimate) -> str:
    if not e.n or not math.isfinite(e.value):
        return "– (n=0)"
    return f"{e.value:.0%} [{e.low:.0%}, {e.high:.0%}] (n={e.n})"


def raters_table(raters: list[RaterQuality]) -> pd.DataFrame:
    """One row per rater (people, then judges): votes, agreement, side bias, self-consistency, flags."""
    rows = [
        {
            "rater": r.rater,
            "kind": r.kind,
            "votes": r.votes,
            "decisive": r.decisive,
            "agrees with the others' majority": _share(r.agreement),
            "kappa vs others": f"{r.kappa:.2f}" if math.isfinite(r.kappa) else "–",
            "chose the left side": _share(r.left_share),
            "same verdict on repeats": _share(r.self_consistency),
            "flag": r.reason or "",
            "left out": "yes" if r.excluded else "",
        }
        for r in raters
    ]
    return pd.DataFrame(rows)


def _difference(d: PairedDifference) -> str:
    if not d.prompts or not math.isfinite(d.value):
        return "–"
    if not (math.isfinite(d.low) and math.isfinite(d.high)):
        return f"{d.value:+.3g} ({d.prompts} prompts)"
    return f"{d.value:+.3g} [{d.low:+.3g}, {d.high:+.3g}] ({d.prompts} prompts, {d.pairs} pairs): {score_verdict(d)}"


def null_arms_table(results: list[NullArmResult]) -> pd.DataFrame:
    """One row per (variant, arm): real minus arm on each score, and the people's and judges' win rates."""
    rows = []
    for r in results:
        row: dict[str, str] = {"variant": r.variant, "null arm": r.arm}
        for metric, difference in r.scores.items():
            row[f"{metric}: real − arm [95% CI]"] = _difference(difference)
        for kind, votes in r.votes.items():
            if kind == "judge" and not votes.votes:
                continue
            e = votes.estimate
            shown = f"{e.value:.0%} [{e.low:.0%}, {e.high:.0%}]" if votes.enough_votes else ""
            row[f"{'people' if kind == 'human' else 'judges'}: real's win rate"] = (
                f"{shown} (n={votes.decisive}): {votes.verdict()}" if shown else votes.verdict()
            )
        rows.append(row)
    return pd.DataFrame(rows)


def judge_lines(c: Comparison) -> list[str]:
    """Judge–human agreement, one sentence per judge."""
    return [a.describe() for a in c.judge_agreement]
