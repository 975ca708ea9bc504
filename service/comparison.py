"""Everything the Compare page and the report show, as plain data.

Win rates are decisive votes only (wins / (wins + losses)) with a 95% Wilson interval;
ties and both-bad votes are counted apart. Every figure carries its vote count.
"""

from __future__ import annotations

import difflib
import html
import math
from dataclasses import dataclass, field

from db import repository as repo
from db.schema import Rating as RatingRow
from db.store import Store
from engine.ranking import Battle, Rating, bradley_terry_with_intervals, cohen_kappa, fleiss_kappa
from engine.stats import Estimate, wilson_interval
from service.catalog import get_experiment
from service.summary import VariantSummary, variant_summaries


@dataclass(frozen=True)
class WinRate:
    variant: str
    opponent: str
    wins: int
    losses: int
    ties: int
    both_bad: int
    estimate: Estimate  # of wins / (wins + losses)

    @property
    def votes(self) -> int:
        return self.wins + self.losses + self.ties + self.both_bad


@dataclass(frozen=True)
class Agreement:
    statistic: str  # "Cohen's kappa", "Fleiss' kappa" or "none"
    value: float
    items: int
    raters: int


@dataclass(frozen=True)
class Comparison:
    experiment: str
    variants: list[str]
    baseline: str | None
    votes: int
    raters: int
    against_baseline: list[WinRate]
    pairwise: list[WinRate]
    bradley_terry: list[Rating]
    left_wins: Estimate  # share of decisive votes won by the left side
    agreement: Agreement
    summaries: list[VariantSummary] = field(default_factory=list)


def compare(store: Store, name: str, bootstrap_rounds: int = 1000, seed: int = 0) -> Comparison:
    summaries = variant_summaries(store, name)
    with store.session() as session:
        experiment = get_experiment(session, name)
        variants = [v.name for v in experiment.variants]
        baseline = next((v.name for v in experiment.variants if v.kind == "baseline"), None)
        votes = [_Vote.of(r) for r in repo.ratings_of(session, experiment.id)]
    battles = [v.battle() for v in votes if v.choice != "both_bad"]
    pairwise = [_win_rate(votes, a, b) for a in variants for b in variants if a != b]
    decisive = [v for v in votes if v.choice in ("left", "right")]
    return Comparison(
        experiment=name,
        variants=variants,
        baseline=baseline,
        votes=len(votes),
        raters=len({v.rater for v in votes}),
        against_baseline=[w for w in pairwise if w.opponent == baseline],
        pairwise=pairwise,
        bradley_terry=bradley_terry_with_intervals(battles, variants, bootstrap_rounds, seed),
        left_wins=wilson_interval(sum(v.choice == "left" for v in decisive), len(decisive)),
        agreement=_agreement(votes),
        summaries=summaries,
    )


@dataclass(frozen=True)
class _Vote:
    rater: str
    left_variant: str
    right_variant: str
    left_id: int
    right_id: int
    choice: str

    @staticmethod
    def of(r: RatingRow) -> _Vote:
        return _Vote(
            r.rater, r.left.variant.name, r.right.variant.name, r.left_generation_id, r.right_generation_id, r.choice
        )

    def battle(self) -> Battle:
        outcome = {"left": 1.0, "right": 0.0, "tie": 0.5}[self.choice]
        return Battle(self.left_variant, self.right_variant, outcome)

    def label(self) -> str:
        """The verdict in terms of the two generations, not the sides they were shown on."""
        if self.choice in ("tie", "both_bad"):
            return self.choice
        winner = self.left_id if self.choice == "left" else self.right_id
        return "lower id won" if winner == min(self.left_id, self.right_id) else "higher id won"


def _win_rate(votes: list[_Vote], variant: str, opponent: str) -> WinRate:
    wins = losses = ties = both_bad = 0
    for v in votes:
        if {v.left_variant, v.right_variant} != {variant, opponent}:
            continue
        if v.choice == "tie":
            ties += 1
        elif v.choice == "both_bad":
            both_bad += 1
        elif (v.choice == "left") == (v.left_variant == variant):
            wins += 1
        else:
            losses += 1
    return WinRate(variant, opponent, wins, losses, ties, both_bad, wilson_interval(wins, wins + losses))


def _agreement(votes: list[_Vote]) -> Agreement:
    by_item: dict[frozenset[int], dict[str, str]] = {}
    for v in votes:
        by_item.setdefault(frozenset((v.left_id, v.right_id)), {})[v.rater] = v.label()
    shared = {item: labels for item, labels in by_item.items() if len(labels) >= 2}
    raters = {r for labels in shared.values() for r in labels}
    if not shared:
        return Agreement("none", math.nan, 0, len(raters))
    if len(raters) == 2:
        first, second = sorted(raters)
        return Agreement(
            "Cohen's kappa",
            cohen_kappa([labels[first] for labels in shared.values()], [labels[second] for labels in shared.values()]),
            len(shared),
            2,
        )
    return Agreement(
        "Fleiss' kappa", fleiss_kappa([list(labels.values()) for labels in shared.values()]), len(shared), len(raters)
    )


# --- per-prompt drill-down ------------------------------------------------------------


@dataclass(frozen=True)
class DrillRow:
    prompt_index: int
    prompt: str
    sample: int
    texts: dict[str, str]  # variant -> text


def drill_down(store: Store, name: str) -> list[DrillRow]:
    with store.session() as session:
        experiment = get_experiment(session, name)
        rows: dict[tuple[int, int], DrillRow] = {}
        for g in repo.generations_of(session, experiment.id):
            key = (g.prompt.position, g.sample_index)
            if key not in rows:
                rows[key] = DrillRow(g.prompt.position, g.prompt.text, g.sample_index, {})
            rows[key].texts[g.variant.name] = g.text
        return [rows[k] for k in sorted(rows)]


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    """Word-level differences: ('same'|'removed'|'added', text) runs turning ``a`` into ``b``."""
    wa, wb = a.split(), b.split()
    out: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(("same", " ".join(wa[i1:i2])))
        else:
            if i2 > i1:
                out.append(("removed", " ".join(wa[i1:i2])))
            if j2 > j1:
                out.append(("added", " ".join(wb[j1:j2])))
    return out


def diff_html(a: str, b: str) -> tuple[str, str]:
    """Two escaped HTML snippets: ``a`` with removed words marked, ``b`` with added words marked."""
    left, right = [], []
    for kind, text in word_diff(a, b):
        safe = html.escape(text)
        if kind == "same":
            left.append(safe)
            right.append(safe)
        elif kind == "removed":
            left.append(f'<mark class="removed">{safe}</mark>')
        else:
            right.append(f'<mark class="added">{safe}</mark>')
    return " ".join(left), " ".join(right)
