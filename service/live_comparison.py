"""The live comparison of a deployment: each variant's traffic and feedback, each arm against the baseline.

Figures are grouped by the variant that was *served* (an arm whose kill switch is on serves
the baseline; its assigned and served counts are both shown). The unit of feedback is the
user: a user who gives several thumbs or scores to one variant counts once, with the mean of
them (their answers are not independent); a response without a user is its own unit. The
tests and their words are :mod:`engine.live_stats`; preferences between two served responses
are votes, judged by :func:`engine.verdicts.compare_votes`. All comparisons of a deployment
(arms x thumbs, score, preferences) form one family, corrected by the experiment's
``statistics.correction`` at its ``alpha``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from db import deployments as stored
from db.store import Store
from engine.live_stats import (
    SCORE_EFFECT,
    THUMBS_EFFECT,
    LiveDifference,
    compare_scores,
    compare_thumbs,
    mean_estimate,
    quantiles,
)
from engine.multiplicity import CorrectionMethod, adjust
from engine.stats import Estimate, wilson_interval
from engine.verdicts import VoteComparison, compare_votes
from service.catalog import stored_spec
from service.deployments import Deployment, as_deployment, deployment_row


@dataclass(frozen=True)
class VariantTraffic:
    """One variant's served traffic and feedback."""

    variant: str
    weight: float | None  # its arm's weight; None: not an arm (the baseline of stopped arms)
    stopped: bool
    assigned: int  # responses the hash gave this arm
    served: int  # responses this variant actually produced
    users: int  # distinct users served (responses without a user count one each)
    completion_tokens: float  # mean per response
    latency_p50: float
    latency_p95: float
    first_token_p50: float
    first_token_p95: float
    thumbs_up: Estimate  # share of units' thumbs that were up; n = units that gave thumbs
    score: Estimate  # mean of units' scores in [0, 1]; n = units that gave a score


@dataclass(frozen=True)
class LiveComparison:
    deployment: Deployment
    alpha: float
    power: float
    correction: CorrectionMethod
    variants: tuple[VariantTraffic, ...]  # the baseline first
    differences: tuple[tuple[str, LiveDifference], ...]  # (arm, its thumbs or score difference to the baseline)
    preferences: tuple[tuple[str, VoteComparison], ...]  # (arm, its preference votes against the baseline)
    unattributed: int  # responses without a served variant (a request's own steering)

    @property
    def family(self) -> int:
        return len(self.differences) + len(self.preferences)


@dataclass
class _Unit:
    thumbs: list[float]
    scores: list[float]


def _unit_values(units: dict[str, _Unit], which: str) -> list[float]:
    values = []
    for unit in units.values():
        own = unit.thumbs if which == "thumbs" else unit.scores
        if own:
            values.append(sum(own) / len(own))
    return values


def _thumbs_estimate(values: Sequence[float], alpha: float, z: float) -> Estimate:
    if all(v in (0.0, 1.0) for v in values):
        return wilson_interval(sum(values), len(values), z)
    return mean_estimate(values, alpha)


def _thumbs_difference(arm: Sequence[float], base: Sequence[float], alpha: float, power: float) -> LiveDifference:
    if all(v in (0.0, 1.0) for v in (*arm, *base)):
        return compare_thumbs(int(sum(arm)), len(arm), int(sum(base)), len(base), alpha, power, THUMBS_EFFECT)
    # Some users gave several thumbs: their up-shares are the units, compared as means.
    return replace(compare_scores(arm, base, alpha, power, THUMBS_EFFECT), metric="thumbs_up")


def live_comparison(store: Store, deployment: str) -> LiveComparison:
    """The deployment's live figures and comparisons (see the module docstring)."""
    from scipy import special

    with store.session() as session:
        row = deployment_row(session, deployment)
        shown = as_deployment(row)
        statistics = stored_spec(row.experiment).statistics
        rows = stored.live_rows(session, row.id)
        votes = stored.preference_rows(session, row.id)
    alpha, power = statistics.alpha, statistics.power
    correction: CorrectionMethod = "benjamini_hochberg" if statistics.correction == "benjamini_hochberg" else "holm"
    z = float(special.ndtri(1 - alpha / 2))

    responses: dict[str, dict[int, stored.LiveRow]] = defaultdict(dict)
    assigned: dict[str, set[int]] = defaultdict(set)
    units: dict[str, dict[str, _Unit]] = defaultdict(dict)
    unattributed: set[int] = set()
    for r in rows:
        if r.assigned is not None:
            assigned[r.assigned].add(r.response_id)
        if r.served is None:
            unattributed.add(r.response_id)
            continue
        responses[r.served][r.response_id] = r
        unit = units[r.served].setdefault(r.user_key or f"response:{r.response_id}", _Unit([], []))
        if r.thumbs is not None:
            unit.thumbs.append(1.0 if r.thumbs == "up" else 0.0)
        if r.score is not None:
            unit.scores.append(r.score)

    arms = {a.variant: a for a in shown.arms}
    order = [shown.baseline, *(a.variant for a in shown.arms if a.variant != shown.baseline)]
    order += sorted(v for v in responses if v not in order)
    variants = []
    for name in order:
        served = list(responses.get(name, {}).values())
        latency = quantiles([r.latency_seconds for r in served])
        first = quantiles([r.first_token_seconds for r in served])
        arm = arms.get(name)
        variants.append(
            VariantTraffic(
                variant=name,
                weight=None if arm is None else arm.weight,
                stopped=arm is not None and arm.stopped,
                assigned=len(assigned.get(name, ())),
                served=len(served),
                users=len(units.get(name, {})) if served else 0,
                completion_tokens=sum(r.completion_tokens for r in served) / len(served) if served else math.nan,
                latency_p50=latency[0],
                latency_p95=latency[1],
                first_token_p50=first[0],
                first_token_p95=first[1],
                thumbs_up=_thumbs_estimate(_unit_values(units.get(name, {}), "thumbs"), alpha, z),
                score=mean_estimate(_unit_values(units.get(name, {}), "scores"), alpha),
            )
        )

    base_units = units.get(shown.baseline, {})
    # A kind of feedback nobody gave (many products collect thumbs only) is no comparison: left out,
    # it neither fills the table with empty rows nor widens the correction's family.
    given = {
        kind: any(_unit_values(variant_units, kind) for variant_units in units.values())
        for kind in ("thumbs", "scores")
    }
    differences: list[tuple[str, LiveDifference]] = []
    for name in order[1:]:
        arm_units = units.get(name, {})
        if given["thumbs"]:
            thumbs = _thumbs_difference(
                _unit_values(arm_units, "thumbs"), _unit_values(base_units, "thumbs"), alpha, power
            )
            differences.append((name, thumbs))
        if given["scores"]:
            score = compare_scores(
                _unit_values(arm_units, "scores"), _unit_values(base_units, "scores"), alpha, power, SCORE_EFFECT
            )
            differences.append((name, score))

    tallies: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for preferred, other, tie in votes:
        if tie or preferred is None or other is None:
            continue
        if other == shown.baseline and preferred != shown.baseline:
            tallies[preferred][0] += 1
        elif preferred == shown.baseline and other != shown.baseline:
            tallies[other][1] += 1
    preferences = [
        (name, compare_votes(tallies[name][0], tallies[name][1], alpha, power, statistics.win_rate))
        for name in order[1:]
        if name in tallies
    ]

    # One family: every arm on every metric, as offline (engine.verdicts.correct).
    p_values = [d.p_value for _, d in differences] + [v.p_value for _, v in preferences]
    adjusted = adjust(p_values, correction)
    family = len(p_values)
    corrected = [
        (name, d.corrected(p, correction, family))
        for (name, d), p in zip(differences, adjusted[: len(differences)], strict=True)
    ]
    corrected_votes = [
        (name, v.corrected(p, correction, family))
        for (name, v), p in zip(preferences, adjusted[len(differences) :], strict=True)
    ]
    return LiveComparison(
        deployment=shown,
        alpha=alpha,
        power=power,
        correction=correction,
        variants=tuple(variants),
        differences=tuple(corrected),
        preferences=tuple(corrected_votes),
        unattributed=len(unattributed),
    )


def _num(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "-"


def _estimate(e: Estimate, digits: int = 3) -> str:
    """ "0.420 [0.310, 0.530] (n=80)"; "- (n=0)" without data."""
    if not math.isfinite(e.value):
        return f"- (n={e.n})"
    if not (math.isfinite(e.low) and math.isfinite(e.high)):
        return f"{e.value:.{digits}f} (n={e.n})"
    return f"{e.value:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}] (n={e.n})"


def traffic_rows(comparison: LiveComparison) -> list[list[str]]:
    """Per variant (header first): weight and switch, assigned and served responses, users, tokens,
    latency and first-token p50/p95, thumbs-up share and mean score with their intervals."""
    level = f"{100 * (1 - comparison.alpha):g}%"
    rows = [
        [
            "variant", "weight", "state", "assigned", "served", "users", "tokens", "latency p50/p95 s",
            "first token p50/p95 s", f"thumbs up [{level}]", f"score [{level}]",
        ]
    ]  # fmt: skip
    total = sum(a.weight for a in comparison.deployment.arms) or 1.0
    for v in comparison.variants:
        role = " (baseline)" if v.variant == comparison.deployment.baseline else ""
        rows.append(
            [
                v.variant + role,
                "-" if v.weight is None else f"{100 * v.weight / total:.0f}%",
                "stopped" if v.stopped else ("serving" if v.weight else "no traffic"),
                str(v.assigned),
                str(v.served),
                str(v.users),
                _num(v.completion_tokens, 1),
                f"{_num(v.latency_p50, 2)} / {_num(v.latency_p95, 2)}",
                f"{_num(v.first_token_p50, 2)} / {_num(v.first_token_p95, 2)}",
                _estimate(v.thumbs_up),
                _estimate(v.score),
            ]
        )
    return rows


def difference_rows(comparison: LiveComparison) -> list[list[str]]:
    """Each arm against the baseline (header first): the difference, its one-look interval, its
    always-valid interval, the adjusted p-value, n, and the verdict's sentence."""
    level = f"{100 * (1 - comparison.alpha):g}%"
    rows = [
        [
            "arm", "metric", "difference", f"{level} interval (one look)", f"{level} always-valid", "p (adjusted)", "n",
            "verdict",
        ]
    ]  # fmt: skip
    names = {"thumbs_up": "thumbs-up share", "score": "mean score"}
    for arm, d in comparison.differences:
        rows.append(
            [
                arm,
                names[d.metric],
                f"{d.estimate:+.3f}" if math.isfinite(d.estimate) else "-",
                f"[{_num(d.low, 3)}, {_num(d.high, 3)}]",
                f"[{_num(d.always_low, 3)}, {_num(d.always_high, 3)}]",
                _num(d.adjusted_p_value, 3),
                f"{d.arm.n} vs {d.baseline.n}",
                d.verdict.sentence,
            ]
        )
    for arm, votes in comparison.preferences:
        rows.append(
            [
                arm,
                "preferred over baseline",
                f"{votes.sequential.value:.3f} win rate" if votes.decisive else "-",
                f"[{votes.win_rate.low:.3f}, {votes.win_rate.high:.3f}]",
                f"[{votes.sequential.low:.3f}, {votes.sequential.high:.3f}]",
                _num(votes.adjusted_p_value, 3),
                f"{votes.decisive} decisive votes",
                votes.verdict.sentence,
            ]
        )
    return rows
