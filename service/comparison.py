"""Everything the Compare page and the report show, as plain data.

Win rates are decisive votes only (wins / (wins + losses)) with a 95% Wilson interval;
ties and both-bad votes are counted apart. Every figure carries its vote count, and a figure
from fewer votes than its minimum (``MIN_DECISIVE_VOTES`` for a win rate,
``MIN_DECISIVE_BATTLES`` for a Bradley–Terry rating) is shown as "too few votes (n=…)".
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field

from db import repository as repo
from db.schema import Rating as RatingRow
from db.store import Store
from engine.ranking import Battle, Rating, bradley_terry_with_intervals, cohen_kappa, fleiss_kappa
from engine.stats import MIN_DECISIVE_VOTES as MIN_DECISIVE_VOTES
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

    @property
    def enough_votes(self) -> bool:
        """Whether the win rate rests on enough decisive votes to be shown (see MIN_DECISIVE_VOTES)."""
        return self.estimate.enough(MIN_DECISIVE_VOTES)


def too_few_votes(n: int, minimum: int, what: str = "decisive votes") -> str:
    """What a page shows instead of a figure from fewer than ``minimum`` votes."""
    return f"too few votes (n={n} {what}; needs {minimum})"


@dataclass(frozen=True)
class Agreement:
    statistic: str  # "Cohen's kappa", "Fleiss' kappa" or "none"
    value: float
    items: int  # shared pairs: pairs of outputs rated by two or more raters
    raters: int  # raters with a vote on a shared pair
    rated_pairs: int = 0  # pairs of outputs with any vote

    @property
    def shared_pairs(self) -> int:
        return self.items

    def describe(self) -> str:
        """One sentence for a page or the report: the figure with its shared pairs, or why there is none."""
        if not self.items:
            return (
                f"not measurable yet: none of the {self.rated_pairs} rated pairs was rated by two or more raters "
                "(shared pairs); raters need overlapping pairs"
            )
        if not math.isfinite(self.value):
            return (
                f"{self.statistic} is not defined on the {self.items} shared pairs (rated by two or more of "
                f"{self.raters} raters): every vote there has the same verdict"
            )
        return f"{self.statistic} = {self.value:.2f} on {self.items} shared pairs (rated by two or more of {self.raters} raters)"


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
        votes = [Vote.of(r) for r in repo.ratings_of(session, experiment.id)]
    return from_votes(name, variants, baseline, votes, summaries, bootstrap_rounds, seed)


def from_votes(
    name: str,
    variants: list[str],
    baseline: str | None,
    votes: list[Vote],
    summaries: list[VariantSummary] | None = None,
    bootstrap_rounds: int = 1000,
    seed: int = 0,
) -> Comparison:
    """The comparison of these votes (and per-variant summaries), without a store."""
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
        summaries=list(summaries or []),
    )


@dataclass(frozen=True)
class Vote:
    """One stored vote, in terms of variant names and generation ids."""

    rater: str
    left_variant: str
    right_variant: str
    left_id: int
    right_id: int
    choice: str

    @staticmethod
    def of(r: RatingRow) -> Vote:
        return Vote(
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


def _win_rate(votes: list[Vote], variant: str, opponent: str) -> WinRate:
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


def _agreement(votes: list[Vote]) -> Agreement:
    by_item: dict[frozenset[int], dict[str, str]] = {}
    for v in votes:
        by_item.setdefault(frozenset((v.left_id, v.right_id)), {})[v.rater] = v.label()
    shared = {item: labels for item, labels in by_item.items() if len(labels) >= 2}
    raters = {r for labels in shared.values() for r in labels}
    if not shared:
        return Agreement("none", math.nan, 0, len(raters), len(by_item))
    if len(raters) == 2:
        first, second = sorted(raters)
        return Agreement(
            "Cohen's kappa",
            cohen_kappa([labels[first] for labels in shared.values()], [labels[second] for labels in shared.values()]),
            len(shared),
            2,
            len(by_item),
        )
    return Agreement(
        "Fleiss' kappa",
        fleiss_kappa([list(labels.values()) for labels in shared.values()]),
        len(shared),
        len(raters),
        len(by_item),
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


_TOKENS = re.compile(r"\S+|\s+")
# Besides HTML's own characters, every character that Markdown or Streamlit's Markdown
# extensions could act on ($ math, :colour[...] and :emoji: directives, emphasis, links,
# code, tables) becomes a numeric entity: the snippet shows the literal text even if it
# ever ends up parsed as Markdown rather than as a raw HTML block.
_ENTITIES = {c: f"&#{ord(c)};" for c in "&<>\"'`*_[]()~$:|#!\\{}=+-"}


def escape_text(text: str) -> str:
    """``text`` as HTML that shows exactly these characters: entities for markup, ``<br>`` for line breaks."""
    escaped = "".join(_ENTITIES.get(c, c) for c in text.replace("\r\n", "\n").replace("\r", "\n"))
    return escaped.replace("\n", "<br>")


def diff_html(a: str, b: str) -> tuple[str, str]:
    """Two escaped HTML snippets: ``a`` with removed words marked, ``b`` with added words marked.

    The words are compared; the texts keep their own spacing and line breaks (shown as
    ``<br>``), and every character is escaped (see :func:`escape_text`), so a prompt or
    output full of Markdown, HTML or links shows literally.
    """
    ta, tb = _TOKENS.findall(a), _TOKENS.findall(b)
    wa = [i for i, t in enumerate(ta) if not t.isspace()]
    wb = [i for i, t in enumerate(tb) if not t.isspace()]
    changed_a: set[int] = set()
    changed_b: set[int] = set()
    matcher = difflib.SequenceMatcher(a=[ta[i] for i in wa], b=[tb[i] for i in wb], autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op != "equal":
            changed_a.update(wa[i1:i2])
            changed_b.update(wb[j1:j2])
    return _marked(ta, wa, changed_a, "removed"), _marked(tb, wb, changed_b, "added")


def _marked(tokens: list[str], words: list[int], changed: set[int], mark: str) -> str:
    """The tokens escaped, each run of changed words (with the spaces between them) in one <mark>."""
    out: list[str] = []
    open_run = False
    last_word = words[-1] if words else -1
    for i, token in enumerate(tokens):
        if i in changed and not open_run:
            out.append(f'<mark class="{mark}">')
            open_run = True
        elif token.isspace() and open_run:
            # Keep the run open over the space only if the next word is changed too.
            if i + 1 > last_word or (i + 1) not in changed:
                out.append("</mark>")
                open_run = False
        elif not token.isspace() and open_run and i not in changed:
            out.append("</mark>")
            open_run = False
        out.append(escape_text(token))
    if open_run:
        out.append("</mark>")
    return "".join(out)
