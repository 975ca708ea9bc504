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
from collections import Counter
from dataclasses import dataclass, field, replace

from db import repository as repo
from db.store import Store
from engine.battles import Tally, battle_of, battles_from_tallies, length_battles, pair_verdict, position_bias
from engine.errors import SteerLabError
from engine.ranking import (
    Battle,
    LengthControlled,
    Rating,
    bradley_terry_from_counts,
    cohen_kappa,
    fleiss_kappa,
    length_controlled_ratings,
)
from engine.rater_quality import JudgeAgreement, RaterQuality
from engine.statistics_spec import StatisticsSpec
from engine.stats import MIN_DECISIVE_VOTES as MIN_DECISIVE_VOTES
from engine.stats import Estimate, wilson_interval
from service import cache
from service.catalog import get_experiment, stored_spec
from service.decisions import Decision, Decisions, decide, pair_decisions, score_order, score_table, tally_counter
from service.null_arms import NullArmResult, null_arm_comparison
from service.raters import judge_human_agreement, rater_report
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
    statistics: StatisticsSpec = field(default_factory=StatisticsSpec)
    # Verdicts against the baseline (people's votes and scores; judges apart), corrected per family.
    decisions: Decisions | None = None
    length_controlled: LengthControlled | None = None  # None: switched off, or no votes
    judge_votes: int = 0  # judges' votes: never in the figures above, which are the people's
    judge_agreement: list[JudgeAgreement] = field(default_factory=list)
    rater_quality: list[RaterQuality] = field(default_factory=list)  # every rater, people and judges
    null_arms: list[NullArmResult] = field(default_factory=list)

    @property
    def excluded_raters(self) -> tuple[str, ...]:
        return self.statistics.exclude_raters


def compare(store: Store, name: str, bootstrap_rounds: int = 1000, seed: int = 0) -> Comparison:
    """Everything Compare shows; recomputed only when the experiment's data changed since the last call."""
    with store.session() as session:
        version = repo.data_version(session, get_experiment(session, name).id)
    return cache.cached(
        (store.url, "compare", name, bootstrap_rounds, seed),
        version,
        lambda: _compare(store, name, bootstrap_rounds, seed),
    )


def _compare(store: Store, name: str, bootstrap_rounds: int, seed: int) -> Comparison:
    """The people's votes (raters left out by the analysts excluded), each judge's votes apart, and scores."""
    summaries = variant_summaries(store, name)
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        statistics = spec.statistics
        exclude = statistics.exclude_raters
        variants = [v.name for v in experiment.variants]
        names = {v.id: v.name for v in experiment.variants}
        baseline = next((v.name for v in experiment.variants if v.kind == "baseline"), None)
        tallies = tally_counter(repo.vote_tallies(session, experiment.id, "human", exclude))
        judge_tallies: dict[str, Counter[Tally]] = {}
        for judge, left, right, choice, n in repo.vote_tallies_by_rater(session, experiment.id, "judge", exclude):
            judge_tallies.setdefault(judge, Counter())[(left, right, choice)] += n
        lengths = repo.length_tallies(session, experiment.id, "human", exclude) if statistics.length_control else []
        overview = repo.vote_overview(session, experiment.id, "human", exclude)
        shared = repo.shared_pair_votes(session, experiment.id, "human", exclude)
        scores = score_table((names[v], p, s, m, x) for v, p, s, m, x in repo.score_rows(session, experiment.id))
    agreement = _agreement_of(shared, overview.rated_pairs)
    length_controlled = (
        length_controlled_ratings(
            length_battles(lengths), variants, bootstrap_rounds, seed, min_decisive=statistics.min_votes
        )
        if lengths
        else None
    )
    comparison = _assemble(
        name,
        variants,
        baseline,
        tallies,
        overview.raters,
        agreement,
        summaries,
        bootstrap_rounds,
        seed,
        statistics,
        # The length-controlled fit holds the raw ratings of the same votes (same prior, same draws).
        length_controlled.raw if length_controlled is not None else None,
    )
    return replace(
        comparison,
        decisions=decide(spec, baseline, tallies, judge_tallies, scores, statistics),
        length_controlled=length_controlled,
        judge_votes=sum(sum(t.values()) for t in judge_tallies.values()),
        judge_agreement=judge_human_agreement(store, name),
        rater_quality=rater_report(store, name),
        null_arms=null_arm_comparison(store, name, exclude),
    )


def compare_two(store: Store, name: str, variant: str, opponent: str) -> list[Decision]:
    """Two variants a team picks on the page, on the people's votes and on every score, paired.

    Not corrected for multiplicity: a pair chosen after looking at the data is one more look,
    which the page says next to the figures.
    """
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        statistics = spec.statistics
        names = {v.id: v.name for v in experiment.variants}
        for wanted in (variant, opponent):
            if wanted not in names.values():
                raise SteerLabError(f"Experiment '{name}' has no variant '{wanted}'; pick one of its variants.")
        tallies = tally_counter(repo.vote_tallies(session, experiment.id, "human", statistics.exclude_raters))
        scores = score_table((names[v], p, s, m, x) for v, p, s, m, x in repo.score_rows(session, experiment.id))
    return pair_decisions(variant, opponent, tallies, scores, score_order(spec, scores), statistics)


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
    tallies: Counter[Tally] = Counter((v.left_variant, v.right_variant, v.choice) for v in votes)
    rated_pairs = len({frozenset((v.left_id, v.right_id)) for v in votes})
    return _assemble(
        name,
        variants,
        baseline,
        tallies,
        len({v.rater for v in votes}),
        _agreement(votes, rated_pairs),
        summaries,
        bootstrap_rounds,
        seed,
    )


def _assemble(
    name: str,
    variants: list[str],
    baseline: str | None,
    tallies: Counter[Tally],
    raters: int,
    agreement: Agreement,
    summaries: list[VariantSummary] | None,
    bootstrap_rounds: int,
    seed: int,
    statistics: StatisticsSpec | None = None,
    ratings: list[Rating] | None = None,
) -> Comparison:
    """Win rates, ratings and the position check from (left, right, choice) tallies: a few hundred
    counts, not one row per vote (engine.battles maps votes to battles)."""
    statistics = statistics or StatisticsSpec()
    by_pair: dict[frozenset[str], list[tuple[Tally, int]]] = {}
    for (left, right, choice), n in tallies.items():
        by_pair.setdefault(frozenset((left, right)), []).append(((left, right, choice), n))
    pairwise = [_win_rate(by_pair.get(frozenset((a, b)), []), a, b) for a in variants for b in variants if a != b]
    battles = battles_from_tallies(tallies)
    return Comparison(
        experiment=name,
        variants=variants,
        baseline=baseline,
        votes=sum(tallies.values()),
        raters=raters,
        against_baseline=[w for w in pairwise if w.opponent == baseline],
        pairwise=pairwise,
        bradley_terry=ratings
        if ratings is not None
        else bradley_terry_from_counts(
            battles.counts, variants, bootstrap_rounds, seed, min_decisive=statistics.min_votes
        ),
        left_wins=position_bias(tallies),
        agreement=agreement,
        summaries=list(summaries or []),
        statistics=statistics,
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

    def battle(self) -> Battle | None:
        """The Bradley–Terry battle of this vote; None for a both-bad vote (counted apart)."""
        return battle_of(self.left_variant, self.right_variant, self.choice)

    def label(self) -> str:
        """The verdict in terms of the two generations, not the sides they were shown on."""
        return pair_verdict(self.left_id, self.right_id, self.choice)


def _win_rate(tallies: list[tuple[Tally, int]], variant: str, opponent: str) -> WinRate:
    wins = losses = ties = both_bad = 0
    for (left, _right, choice), n in tallies:
        if choice == "tie":
            ties += n
        elif choice == "both_bad":
            both_bad += n
        elif (choice == "left") == (left == variant):
            wins += n
        else:
            losses += n
    return WinRate(variant, opponent, wins, losses, ties, both_bad, wilson_interval(wins, wins + losses))


def _agreement(votes: list[Vote], rated_pairs: int) -> Agreement:
    """Agreement on the pairs that two or more raters rated (``votes`` may hold only those)."""
    return _agreement_of([(v.rater, v.left_id, v.right_id, v.choice) for v in votes], rated_pairs)


def _agreement_of(votes: list[tuple[str, int, int, str]], rated_pairs: int) -> Agreement:
    """The same from (rater, left id, right id, choice) rows (tens of thousands at team scale)."""
    by_item: dict[tuple[int, int], dict[str, str]] = {}
    for rater, left, right, choice in votes:
        label = pair_verdict(left, right, choice)  # in terms of the two outputs, not the sides
        by_item.setdefault((left, right) if left < right else (right, left), {})[rater] = label
    shared = {item: labels for item, labels in by_item.items() if len(labels) >= 2}
    raters = {r for labels in shared.values() for r in labels}
    if not shared:
        return Agreement("none", math.nan, 0, len(raters), rated_pairs)
    if len(raters) == 2:
        first, second = sorted(raters)
        return Agreement(
            "Cohen's kappa",
            cohen_kappa([labels[first] for labels in shared.values()], [labels[second] for labels in shared.values()]),
            len(shared),
            2,
            rated_pairs,
        )
    return Agreement(
        "Fleiss' kappa",
        fleiss_kappa([list(labels.values()) for labels in shared.values()]),
        len(shared),
        len(raters),
        rated_pairs,
    )


# --- per-prompt drill-down ------------------------------------------------------------


@dataclass(frozen=True)
class DrillRow:
    prompt_index: int
    prompt: str
    sample: int
    texts: dict[str, str]  # variant -> text


def drill_down(store: Store, name: str, rows: list[tuple[int, int]] | None = None) -> list[DrillRow]:
    """Every output by (prompt, sample) row; ``rows`` limits it to these (prompt index, sample) rows."""
    with store.session() as session:
        experiment = get_experiment(session, name)
        out: dict[tuple[int, int], DrillRow] = {}
        for g in repo.generation_rows(session, experiment.id, rows):
            key = (g.prompt_index, g.sample_index)
            if key not in out:
                out[key] = DrillRow(g.prompt_index, g.prompt, g.sample_index, {})
            out[key].texts[g.variant] = g.text
        return [out[k] for k in sorted(out)]


def drill_rows(store: Store, name: str) -> list[DrillRow]:
    """The (prompt, sample) rows that have outputs, without their texts (a page lists them, then loads one)."""
    with store.session() as session:
        experiment = get_experiment(session, name)
        return [DrillRow(i, prompt, sample, {}) for i, prompt, sample in repo.output_rows(session, experiment.id)]


def drill_texts(store: Store, name: str, prompt_index: int, sample: int) -> dict[str, str]:
    """Variant -> output of one (prompt, sample) row, in variant order."""
    rows = drill_down(store, name, [(prompt_index, sample)])
    return rows[0].texts if rows else {}


def clear_caches() -> None:
    """Forget cached comparisons (the store benchmark measures cold computations)."""
    cache.clear()


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
