"""The live comparison of a deployment: each variant's traffic and feedback, each arm against the baseline.

**Intention to treat.** Feedback, preferences and the comparisons are grouped by the arm a
user was *assigned* (their hash's pick), not by what ran: when an arm's kill switch sends its
users the baseline, their later feedback still counts for their arm, so no user is in two
samples and the comparison stays the randomised one (it measures "deploying this arm, with
its kill switch", and a stop pulls the arm's figures towards the baseline's). Traffic,
tokens and latency are by the variant that actually ran (*served*).

The unit of feedback is the user the response was served to (service.deployments refuses
feedback from anyone else): a user who rates several responses of an arm counts once, with
the mean of their ratings; a response without a user is its own unit.

**Thumbs-up share** is the mean over units of each unit's share of thumbs up. While every
unit's thumbs agree (each share is 0 or 1) it gets the Wilson interval and differences the
Newcombe interval; once any unit of the deployment gave mixed thumbs, every share of the
deployment gets the t interval over units' shares and differences the Welch interval
(:attr:`LiveComparison.thumbs_interval` says which). The tests and their words are
:mod:`engine.live_stats`; preferences between two responses are votes, judged by
:func:`engine.verdicts.compare_votes`.

**One fixed family.** Every arm besides the baseline x (thumbs, score, preference) counts in the
experiment's ``statistics.correction`` at its ``alpha``, whether it has data yet or not (a
comparison without data has p = 1), so a verdict does not change when unrelated feedback
arrives; only adding an arm to the deployment widens the family. The tables leave out
comparisons without data; the family size is shown beside them.
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
from engine.stats import Estimate, plural, wilson_interval
from engine.verdicts import VoteComparison, compare_votes
from service.catalog import stored_spec
from service.deployments import Deployment, as_deployment, deployment_row


@dataclass(frozen=True)
class VariantTraffic:
    """One variant's traffic (by the variant served) and feedback (by the arm assigned)."""

    variant: str
    weight: float | None  # its arm's weight; None: not an arm
    stopped: bool
    assigned: int  # responses the hash gave this arm
    served: int  # responses this variant actually produced
    abandoned: int  # of those, cut short by a client that left (finish reason "cancelled")
    users: int  # distinct users assigned this arm (responses without a user count one each)
    completion_tokens: float  # mean per finished response (abandoned ones would pull it down)
    latency_p50: float
    latency_p95: float
    first_token_p50: float
    first_token_p95: float
    thumbs_up: Estimate  # mean of units' thumbs-up shares; n = units that gave thumbs
    score: Estimate  # mean of units' scores in [0, 1]; n = units that gave a score


@dataclass(frozen=True)
class LiveComparison:
    deployment: Deployment
    alpha: float
    power: float
    correction: CorrectionMethod
    variants: tuple[VariantTraffic, ...]  # the baseline first
    differences: tuple[tuple[str, LiveDifference], ...]  # (arm, thumbs or score difference); only those with data
    preferences: tuple[tuple[str, VoteComparison], ...]  # (arm, its preference votes against the baseline); with votes
    unattributed: int  # responses without a served variant (a request's own steering)
    family: int  # comparisons corrected together: arms besides the baseline x 3, with data or not
    thumbs_interval: str  # "Wilson" or "t over users' shares" (see the module docstring)


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


def _all_binary(units: dict[str, dict[str, _Unit]]) -> bool:
    return all(v in (0.0, 1.0) for arm_units in units.values() for v in _unit_values(arm_units, "thumbs"))


def _thumbs_estimate(values: Sequence[float], binary: bool, alpha: float, z: float) -> Estimate:
    if binary:
        return wilson_interval(sum(values), len(values), z)
    return mean_estimate(values, alpha)


def _thumbs_difference(
    arm: Sequence[float], base: Sequence[float], binary: bool, alpha: float, power: float
) -> LiveDifference:
    if binary:
        return compare_thumbs(int(sum(arm)), len(arm), int(sum(base)), len(base), alpha, power, THUMBS_EFFECT)
    # Some user gave mixed thumbs: users' up-shares are the units, compared as means.
    return replace(compare_scores(arm, base, alpha, power, THUMBS_EFFECT), metric="thumbs_up")


def _p_or_one(p: float) -> float:
    """A comparison without data yet is in the family with p = 1 (it can reject nothing)."""
    return p if math.isfinite(p) else 1.0


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
    units: dict[str, dict[str, _Unit]] = defaultdict(dict)  # by the arm assigned (intention to treat)
    unattributed: set[int] = set()
    for r in rows:
        if r.assigned is not None:
            assigned[r.assigned].add(r.response_id)
        if r.served is None:
            unattributed.add(r.response_id)
            continue
        responses[r.served][r.response_id] = r
        arm_of = r.assigned if r.assigned is not None else r.served
        unit = units[arm_of].setdefault(r.user_key or f"response:{r.response_id}", _Unit([], []))
        if r.thumbs is not None:
            unit.thumbs.append(1.0 if r.thumbs == "up" else 0.0)
        if r.score is not None:
            unit.scores.append(r.score)

    binary = _all_binary(units)
    arms = {a.variant: a for a in shown.arms}
    order = [shown.baseline, *(a.variant for a in shown.arms if a.variant != shown.baseline)]
    order += sorted(v for v in (*responses, *units) if v not in order)
    order = list(dict.fromkeys(order))
    variants = []
    for name in order:
        served = list(responses.get(name, {}).values())
        # An abandoned response's length and time are the client's, not the variant's: its
        # tokens and latency leave them out (first-token times keep them: the first token came).
        finished = [r for r in served if r.finish_reason != "cancelled"]
        latency = quantiles([r.latency_seconds for r in finished])
        first = quantiles([r.first_token_seconds for r in served if r.completion_tokens > 0])
        arm = arms.get(name)
        variant_units = units.get(name, {})
        variants.append(
            VariantTraffic(
                variant=name,
                weight=None if arm is None else arm.weight,
                stopped=arm is not None and arm.stopped,
                assigned=len(assigned.get(name, ())),
                served=len(served),
                abandoned=len(served) - len(finished),
                users=len(variant_units),
                completion_tokens=sum(r.completion_tokens for r in finished) / len(finished) if finished else math.nan,
                latency_p50=latency[0],
                latency_p95=latency[1],
                first_token_p50=first[0],
                first_token_p95=first[1],
                thumbs_up=_thumbs_estimate(_unit_values(variant_units, "thumbs"), binary, alpha, z),
                score=mean_estimate(_unit_values(variant_units, "scores"), alpha),
            )
        )

    base_units = units.get(shown.baseline, {})
    compared = [a.variant for a in shown.arms if a.variant != shown.baseline]  # the family: arms only
    differences: list[tuple[str, LiveDifference]] = []
    for name in compared:
        arm_units = units.get(name, {})
        differences.append(
            (
                name,
                _thumbs_difference(
                    _unit_values(arm_units, "thumbs"), _unit_values(base_units, "thumbs"), binary, alpha, power
                ),
            )
        )
        differences.append(
            (
                name,
                compare_scores(
                    _unit_values(arm_units, "scores"), _unit_values(base_units, "scores"), alpha, power, SCORE_EFFECT
                ),
            )
        )

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
        for name in compared
    ]

    # The family is fixed by the arms: every arm x (thumbs, score, preference), data or not
    # (p = 1 without), so feedback on one metric cannot flip a verdict on another.
    p_values = [_p_or_one(d.p_value) for _, d in differences] + [_p_or_one(v.p_value) for _, v in preferences]
    adjusted = adjust(p_values, correction)
    family = len(p_values)
    corrected = [
        (name, d.corrected(p, correction, family))
        for (name, d), p in zip(differences, adjusted[: len(differences)], strict=True)
        if d.arm.n or d.baseline.n
    ]
    corrected_votes = [
        (name, v.corrected(p, correction, family))
        for (name, v), p in zip(preferences, adjusted[len(differences) :], strict=True)
        if sum(tallies[name])
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
        family=family,
        thumbs_interval="Wilson" if binary else "t over users' shares",
    )


def summary(comparison: LiveComparison) -> str:
    """One sentence on what the comparisons cover (or why there are none yet)."""
    d = comparison.deployment
    others = [a.variant for a in d.arms if a.variant != d.baseline]
    if not others:
        return f"The deployment has no arm besides its baseline ({d.baseline}): nothing to compare."
    if not (comparison.differences or comparison.preferences):
        return (
            f"No feedback or preferences yet on the arms ({', '.join(others)}) or the baseline ({d.baseline}): "
            "nothing to compare yet."
        )
    return (
        f"Each arm against the baseline ({d.baseline}), by the arm users were assigned (intention to treat: a stopped arm's users "
        f"keep counting for it); unpaired, each user once; {comparison.correction}-corrected over "
        f"{plural(comparison.family, 'comparison')} (every arm x thumbs, score, preference) at alpha "
        f"{comparison.alpha:g}."
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


def unattributed_note(comparison: LiveComparison) -> str:
    """The sentence about responses that ran a request's own steering (no variant to count them for)."""
    n = comparison.unattributed
    return (
        f"{plural(n, 'response')} ran a request's own steering and {'belongs' if n == 1 else 'belong'} to no variant."
    )


def traffic_rows(comparison: LiveComparison) -> list[list[str]]:
    """Per variant (header first): weight and switch, assigned and served responses, users, tokens,
    latency and first-token p50/p95, thumbs-up share and mean score with their intervals."""
    level = f"{100 * (1 - comparison.alpha):g}%"
    rows = [
        [
            "variant", "weight", "state", "assigned", "served", "abandoned", "users", "tokens", "latency p50/p95 s",
            "first token p50/p95 s", f"thumbs-up share [{level} {comparison.thumbs_interval}]",
            f"score [{level} t]",
        ]
    ]  # fmt: skip
    total = sum(a.weight for a in comparison.deployment.arms) or 1.0
    for v in comparison.variants:
        role = " (baseline)" if v.variant == comparison.deployment.baseline else ""
        rows.append(
            [
                v.variant + role,
                "-" if v.weight is None else f"{100 * v.weight / total:.0f}%",
                _state(comparison.deployment, v),
                str(v.assigned),
                str(v.served),
                str(v.abandoned),
                str(v.users),
                _num(v.completion_tokens, 1),
                f"{_num(v.latency_p50, 2)} / {_num(v.latency_p95, 2)}",
                f"{_num(v.first_token_p50, 2)} / {_num(v.first_token_p95, 2)}",
                _estimate(v.thumbs_up),
                _estimate(v.score),
            ]
        )
    return rows


def _state(deployment: Deployment, v: VariantTraffic) -> str:
    if not deployment.live:
        return "ended"
    if v.weight is None:
        return "not an arm"
    return "stopped" if v.stopped else ("serving" if v.weight else "no traffic")


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
