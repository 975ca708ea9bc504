"""From stored votes to battles: the one mapping every statistic of votes uses.

A stored vote says which output was shown on the left, which on the right, and the choice:
"left" or "right" (that side's output is better), "tie", or "both_bad". As a Bradley–Terry
battle (first = the left variant, second = the right one) the left side winning is outcome
1.0, the right side winning 0.0 and a tie 0.5 (half a win each way). A both-bad vote says
nothing about which variant is better, so it is left out of the ratings and counted apart.

The position check uses the same votes: the share of decisive votes won by whichever output
was on the left. Sides are drawn at random per pair, so without a bias it is 0.5.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from engine.errors import SteerLabError
from engine.ranking import Battle
from engine.stats import Estimate, wilson_interval

CHOICES = ("left", "right", "tie", "both_bad")
OUTCOME_OF_CHOICE: Mapping[str, float] = {"left": 1.0, "right": 0.0, "tie": 0.5}

# The verdict of a vote in terms of the two outputs, not the sides they were shown on: what two
# raters who saw the same pair in different orders can agree on.
LOWER_WON = "lower id won"
HIGHER_WON = "higher id won"

# (left variant, right variant, choice) -> votes: all that win rates, Bradley–Terry and the
# position check need, so they are computed from a few hundred counts, not one row per vote.
Tally = tuple[str, str, str]


def outcome_of(choice: str) -> float | None:
    """The battle outcome of a choice for the left variant: 1.0, 0.0, 0.5, or None for both bad."""
    if choice == "both_bad":
        return None
    if choice not in OUTCOME_OF_CHOICE:
        raise SteerLabError(f"Vote choice '{choice}' is not one of {', '.join(CHOICES)}; store one of those.")
    return OUTCOME_OF_CHOICE[choice]


def battle_of(left_variant: str, right_variant: str, choice: str) -> Battle | None:
    """The battle of one vote (first = the left variant), or None for a both-bad vote."""
    outcome = outcome_of(choice)
    return None if outcome is None else Battle(left_variant, right_variant, outcome)


@dataclass(frozen=True)
class VoteBattles:
    """Votes as Bradley–Terry battle counts, and the both-bad votes left out of them."""

    counts: Counter[tuple[str, str, float]] = field(default_factory=Counter)  # (first, second, outcome) -> votes
    both_bad: int = 0
    both_bad_by_variant: Counter[str] = field(default_factory=Counter)  # both-bad votes each variant was in


def battles_from_tallies(tallies: Mapping[Tally, int]) -> VoteBattles:
    """Battle counts of tallied votes; both-bad votes are counted apart (total and per variant)."""
    counts: Counter[tuple[str, str, float]] = Counter()
    both_bad_by_variant: Counter[str] = Counter()
    both_bad = 0
    for (left, right, choice), n in tallies.items():
        outcome = outcome_of(choice)
        if outcome is None:
            both_bad += n
            both_bad_by_variant[left] += n
            both_bad_by_variant[right] += n
        else:
            counts[(left, right, outcome)] += n
    return VoteBattles(counts, both_bad, both_bad_by_variant)


def length_battles(
    rows: Iterable[tuple[str, str, str, int, int, int]],
) -> list[tuple[str, str, float, int, int, int]]:
    """(left, right, choice, left tokens, right tokens, votes) rows (``repository.length_tallies``) as
    (first, second, outcome, first tokens, second tokens, votes) for length-controlled ratings;
    both-bad votes are left out."""
    out = []
    for left, right, choice, left_tokens, right_tokens, n in rows:
        outcome = outcome_of(choice)
        if outcome is not None:
            out.append((left, right, outcome, left_tokens, right_tokens, n))
    return out


def position_bias(tallies: Mapping[Tally, int]) -> Estimate:
    """Share of decisive votes won by the output on the left, with a 95% Wilson interval (n = decisive votes).

    Ties and both-bad votes are not decisive. An interval that excludes 0.5 means raters
    (or a judge) favour one side whatever is shown there.
    """
    left = right = 0
    for (_, _, choice), n in tallies.items():
        outcome_of(choice)  # refuses an unknown choice
        if choice == "left":
            left += n
        elif choice == "right":
            right += n
    return wilson_interval(left, left + right)


def pair_verdict(left_id: int, right_id: int, choice: str) -> str:
    """The verdict in terms of the two outputs (LOWER_WON, HIGHER_WON, "tie", "both_bad"), not the sides."""
    outcome = outcome_of(choice)
    if outcome is None or outcome == 0.5:
        return choice
    winner = left_id if choice == "left" else right_id
    return LOWER_WON if winner == min(left_id, right_id) else HIGHER_WON
