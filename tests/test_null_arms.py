"""Null arms: a steering variant's random-direction and flipped-sign controls, from the file to Compare."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select

from db import repository as repo
from db.schema import Generation
from db.store import Store
from engine.errors import SteerLabError
from engine.extract import extract_vector
from engine.fields import Where
from engine.generation import forward, left_pad, positions_from_mask
from engine.methods.base import PositionMasks, PreparedEdit
from engine.models import LoadedModel
from engine.null_arms import NullArmEdit, arm_seed, flipped, random_direction
from engine.spec import ExperimentSpec, parse_experiment
from engine.spec_schema import experiment_json_schema
from engine.stats import wilson_interval
from engine.steering import BatchSteering
from engine.vectors import SteeringVector
from service.catalog import get_experiment, save_spec, stored_spec
from service.null_arms import null_arm_comparison, score_verdict
from service.playground import Chat, reply
from service.provenance import variant_hash
from service.running import RunOptions, run_spec
from tests.conftest import TINYSTORIES, needs_models
from tests.helpers import tokens
from tests.test_extract import PAIRS

ADD = {"method": "add", "vector": "sad", "layers": [1], "coefficient": 2.0}
OPENINGS = [
    "Once upon a time, there was a little bird who ",
    "Tim dropped his ice cream on the ground. He ",
    "The puppy could not find its mom. It ",
    "Sara had a new doll. She ",
]


def experiment(**sad: Any) -> dict[str, Any]:
    """A small TinyStories experiment: baseline, 'sad' (layer 1, x2) and 'sad_negated' (x-2) declared by hand."""
    return {
        "name": "arms",
        "model": TINYSTORIES,
        "prompts": list(OPENINGS),
        "generation": {"max_new_tokens": 12, "seed": 3},
        "vectors": {"sad": {"pairs": [list(p) for p in PAIRS]}},
        "variants": [
            {"name": "baseline"},
            {"name": "sad", "interventions": [dict(ADD)], **sad},
            {"name": "sad_negated", "interventions": [{**ADD, "coefficient": -2.0}]},
        ],
        "scorers": [{"name": "sad_words", "kind": "words", "words": ["sad", "cried", "cry", "tears", "lonely"]}],
    }


def parsed(data: dict[str, Any]) -> ExperimentSpec:
    return parse_experiment(data, Where("arms.yaml"))


def failure(data: dict[str, Any]) -> str:
    with pytest.raises(SteerLabError) as info:
        parsed(data)
    return str(info.value)


# --- the declaration ---------------------------------------------------------------------


def test_null_arms_become_variants_after_their_own_and_round_trip() -> None:
    spec = parsed(experiment(null_arms=True))
    assert [v.name for v in spec.variants] == ["baseline", "sad", "sad (random)", "sad (flipped)", "sad_negated"]
    random_arm, flipped_arm = spec.variants[2], spec.variants[3]
    assert (random_arm.control_of, random_arm.control, random_arm.kind) == ("sad", "random", "steering")
    assert (flipped_arm.control_of, flipped_arm.control) == ("sad", "flipped")
    edit = random_arm.interventions[0]
    assert isinstance(edit, NullArmEdit) and edit.name == "add" and edit.vector_names() == ("sad",)
    assert (edit.layers, edit.seed, edit.variant) == ((1,), 3, "sad")
    assert edit.to_dict() == {**ADD, "scope": "all", "null_arm": "random"}

    stored = spec.to_dict()
    assert [v["name"] for v in stored["variants"]] == ["baseline", "sad", "sad_negated"], "arms are derived, not stored"
    assert stored["variants"][1]["null_arms"] == ["random", "flipped"]
    again = parse_experiment(stored, Where("stored"))
    assert again == spec and again.to_dict() == stored

    # Rebuilding the spec (as the dashboard's edits do) derives the arms again, never twice.
    assert replace(spec, variants=spec.variants) == spec
    reseeded = replace(spec, generation=replace(spec.generation, seed=4))
    assert [v.name for v in reseeded.variants] == [v.name for v in spec.variants]
    reseeded_edit = reseeded.variants[2].interventions[0]
    assert isinstance(reseeded_edit, NullArmEdit) and reseeded_edit.seed == 4
    without_sad = replace(spec, variants=tuple(v for v in spec.variants if v.name != "sad"))
    assert [v.name for v in without_sad.variants] == ["baseline", "sad_negated"], "the arms go with their variant"


def test_definition_hash_changes_only_with_null_arms() -> None:
    plain = parsed(experiment())
    both = parsed(experiment(null_arms=True))
    assert parsed(experiment(null_arms=[])).definition_hash() == plain.definition_hash()
    assert parsed(experiment(null_arms=False)).definition_hash() == plain.definition_hash()
    assert parsed(experiment(null_arms=["flipped", "random"])).definition_hash() == both.definition_hash()
    assert both.definition_hash() != plain.definition_hash()
    assert parsed(experiment(null_arms=["random"])).definition_hash() not in {
        plain.definition_hash(),
        both.definition_hash(),
    }
    # What decides the real variant's outputs is unchanged, so declaring controls keeps them.
    assert variant_hash(both, both.variants[1]) == variant_hash(plain, plain.variants[1])
    assert variant_hash(both, both.variants[2]) != variant_hash(both, both.variants[3])


def test_the_schema_declares_null_arms() -> None:
    field = experiment_json_schema()["$defs"]["variant"]["properties"]["null_arms"]
    assert {"type": "boolean"} in field["anyOf"]


def test_bad_null_arms_are_one_sentence() -> None:
    data = experiment(null_arms=["random", "mirror"])
    assert failure(data) == (
        "arms.yaml, field variants[1].null_arms[1]: is the text 'mirror'; use one of random, flipped."
    )
    assert "names an arm twice" in failure(experiment(null_arms=["random", "random"]))

    on_baseline = experiment()
    on_baseline["variants"][0]["null_arms"] = True
    assert failure(on_baseline) == (
        "arms.yaml, field variants[0].null_arms: is set on a baseline variant, which reads no steering vector to "
        "replace; remove it, or declare null arms on a steering variant."
    )

    words = experiment(null_arms=True)
    words["variants"][1]["interventions"] = [{"method": "nudge", "layer": 0, "words": ["sad"], "steps": 1}]
    assert failure(words) == (
        "arms.yaml, field variants[1].null_arms: is set, but none of the variant's edits (nudge) reads a vector, so "
        "a null arm would be the variant itself; remove null_arms."
    )

    ablation = experiment(null_arms=True)
    ablation["variants"][1]["interventions"] = [{"method": "ablate", "vector": "sad", "layers": [0]}]
    assert failure(ablation) == (
        "arms.yaml, field variants[1].null_arms: asks for a flipped arm, but ablate removes the vector's direction "
        "whichever its sign, so the flipped arm would be the variant itself; use null_arms: [random]."
    )
    ablation["variants"][1]["null_arms"] = ["random"]
    assert [v.name for v in parsed(ablation).variants][2] == "sad (random)"

    clash = experiment(null_arms=True)
    clash["variants"][2]["name"] = "sad (flipped)"
    assert failure(clash) == (
        "arms.yaml, field variants[1].null_arms: gives 'sad' a flipped arm named 'sad (flipped)', the name of a "
        "variant declared by hand; rename that variant or remove 'flipped' from null_arms."
    )


def test_a_hand_made_variant_with_an_arms_name_is_refused_when_the_spec_is_rebuilt() -> None:
    # The dashboard replaces a variant in the spec (saving a form) without parsing the whole file.
    spec = parsed(experiment(null_arms=True))
    impostor = replace(spec.variants[-1], name="sad (random)")
    with pytest.raises(SteerLabError) as info:
        replace(spec, variants=(*spec.variants, impostor))
    assert str(info.value) == (
        "Variant 'sad (random)' is the random null arm of 'sad', derived from it, and cannot also be declared by "
        "hand; change 'sad' or its null_arms instead, or give the declared variant another name."
    )


# --- the null vectors ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sad(tiny: LoadedModel) -> SteeringVector:
    return extract_vector(tiny, "sad", PAIRS, lambda t: tokens(tiny, t))


def test_random_direction_keeps_each_layers_norm_and_is_orthogonal(sad: SteeringVector) -> None:
    arm = random_direction(sad, seed=3, variant="sad")
    assert arm.layers == sad.layers and arm.name == "sad" and arm.directions.dtype == torch.float32
    torch.testing.assert_close(arm.directions.norm(dim=1), sad.directions.norm(dim=1), rtol=1e-6, atol=0.0)
    cosines = torch.nn.functional.cosine_similarity(arm.directions.double(), sad.directions.double(), dim=1)
    assert cosines.abs().max() < 1e-6, cosines

    # The same direction every time it is asked for (a second run, a resumed run, the playground) ...
    assert torch.equal(random_direction(sad, seed=3, variant="sad").directions, arm.directions)
    # ... another for another seed, variant or vector.
    assert not torch.equal(random_direction(sad, seed=4, variant="sad").directions, arm.directions)
    assert not torch.equal(random_direction(sad, seed=3, variant="sad_x2").directions, arm.directions)
    assert arm_seed(3, "sad", "sad", 0) != arm_seed(3, "sad", "happy", 0) != arm_seed(3, "sad", "sad", 1)
    # A layer's direction does not depend on which other layers the vector covers.
    layer_one = SteeringVector("sad", sad.directions[1:].clone(), (1,), sad.model_id)
    assert torch.equal(random_direction(layer_one, seed=3, variant="sad").directions[0], arm.directions[1])


def test_a_zero_layer_stays_zero_and_flipping_is_exact(sad: SteeringVector) -> None:
    directions = sad.directions.clone()
    directions[0] = 0.0
    partly_zero = replace(sad, directions=directions)
    arm = random_direction(partly_zero, seed=3, variant="sad")
    assert torch.equal(arm.directions[0], torch.zeros_like(directions[0]))
    assert torch.equal(flipped(sad).directions, -sad.directions)


# --- every vector-based method -------------------------------------------------------------

CONDITION = {
    "applies": ["The dog was lost and alone.", "The girl was sick in bed."],
    "not_applies": ["The sun was shining.", "They ate cake at the party."],
    "threshold": -1.0,  # every prompt passes the gate, so the edit acts on both test prompts
    "layer": 1,
}
METHODS: list[dict[str, Any]] = [
    {"method": "add", "vector": "sad", "layers": [0, 1], "coefficient": 2.0},
    {"method": "add_norm", "vector": "sad", "layers": [0], "coefficient": 3.0},
    {"method": "conditional", "vector": "sad", "layers": [1], "coefficient": 2.0, "condition": CONDITION},
    {"method": "nudge", "layer": 1, "target": "vector", "vector": "sad", "steps": 2},
    {"method": "ablate", "vector": "sad", "layers": [0, 1]},
]


def steered_logits(model: LoadedModel, prompts: list[list[int]], row_edits: list[list[PreparedEdit]]) -> torch.Tensor:
    """All-position logits of one mixed batch, each row with its own edits (begun as a run begins them)."""
    steering = BatchSteering(model, row_edits)
    steering.begin(prompts)
    ids, mask = left_pad(model, prompts)
    with torch.no_grad(), steering.attached():
        steering.masks = PositionMasks.prompt_only(mask)
        return forward(model, ids, mask, positions_from_mask(mask), last_only=False).logits


@pytest.mark.parametrize("raw", METHODS, ids=lambda raw: str(raw["method"]))
def test_every_vector_method_runs_its_arms(tiny: LoadedModel, sad: SteeringVector, raw: dict[str, Any]) -> None:
    data = experiment(null_arms=["random"] if raw["method"] == "ablate" else True)
    data["variants"][1]["interventions"] = [raw]
    if "coefficient" in raw:
        data["variants"][2]["interventions"] = [{**raw, "coefficient": -raw["coefficient"]}]
    else:
        data["variants"] = data["variants"][:2]
    spec = parsed(data)
    by_name = {v.name: v for v in spec.variants}
    names = ["sad", *(n for n in ("sad (random)", "sad (flipped)", "sad_negated") if n in by_name)]
    edits = {n: [i.prepare(tiny, {"sad": sad}) for i in by_name[n].interventions] for n in names}
    prompts = [tokens(tiny, OPENINGS[0]), tokens(tiny, OPENINGS[3])]
    rows = [edits[n] for n in names for _ in prompts]
    logits = steered_logits(tiny, prompts * len(names), rows)
    out = {n: logits[2 * i : 2 * i + 2] for i, n in enumerate(names)}

    assert (out["sad (random)"] - out["sad"]).abs().max() > 1e-3, "the random arm is another edit"
    if "sad (flipped)" in out:
        assert (out["sad (flipped)"] - out["sad"]).abs().max() > 1e-3
    if "sad_negated" in out:
        # The vector's sign flipped is the coefficient's sign flipped, to the bit.
        assert torch.equal(out["sad (flipped)"], out["sad_negated"])


# --- runs, the playground and Compare ------------------------------------------------------


class CancelAfter:
    """Cancels once ``batches`` batches are stored."""

    def __init__(self, batches: int) -> None:
        self.batches, self.seen = batches, -1  # the first progress report comes before any batch

    def progress(self, _report: object) -> None:
        self.seen += 1

    def is_set(self) -> bool:
        return self.seen >= self.batches


@dataclass(frozen=True)
class Output:
    text: str
    tokens: int
    run_id: int | None
    seconds: float


def outputs(store: Store, name: str = "arms") -> dict[tuple[str, int], Output]:
    """(variant, prompt position) -> its stored output."""
    with store.session() as session:
        experiment_id = get_experiment(session, name).id
        run_ids = dict(
            session.execute(
                select(Generation.id, Generation.run_id).where(Generation.experiment_id == experiment_id)
            ).all()
        )
        return {
            (g.variant, g.prompt_index): Output(g.text, g.token_count, run_ids[g.id], g.seconds)
            for g in repo.generation_rows(session, experiment_id)
        }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny: LoadedModel) -> tuple[Store, Store]:
    """The experiment with null arms run twice: in one batch, and in batches of 4 cancelled after two and resumed."""
    folder = tmp_path_factory.mktemp("arms")
    spec = parsed(experiment(null_arms=True))
    straight = Store(str(folder / "straight.db"))
    assert run_spec(straight, spec, "arms.yaml", RunOptions(batch_size=20, device="cpu")).status == "done"
    resumed = Store(str(folder / "resumed.db"))
    flag = CancelAfter(batches=2)
    first = run_spec(resumed, spec, "arms.yaml", RunOptions(batch_size=4, device="cpu"), flag.progress, flag)
    assert (first.status, first.generated, first.total) == ("cancelled", 20, 20)
    assert len(outputs(resumed)) == 8
    second = run_spec(resumed, spec, "arms.yaml", RunOptions(batch_size=4, device="cpu"))
    assert (second.status, second.generated) == ("done", 12)
    return straight, resumed


@needs_models
def test_arms_run_in_the_same_mixed_batches_and_resume_to_the_same_outputs(runs: tuple[Store, Store]) -> None:
    straight, resumed = runs
    done = outputs(straight)
    assert len(done) == 20
    for prompt in range(len(OPENINGS)):
        real = done[("sad", prompt)]
        for arm in ("sad (random)", "sad (flipped)"):
            # One run, one batch: the same run id, and the same share of the batch's time.
            assert done[(arm, prompt)].run_id == real.run_id is not None
            assert done[(arm, prompt)].seconds == real.seconds
        # The flipped arm is the variant declared by hand with the negated coefficient, to the token.
        assert done[("sad (flipped)", prompt)] == replace(done[("sad_negated", prompt)], run_id=real.run_id)
    assert any(done[("sad (random)", p)].text != done[("sad", p)].text for p in range(len(OPENINGS)))

    # The random direction is drawn again for the resumed run: the same outputs as one uninterrupted run.
    again = outputs(resumed)
    assert {k: (o.text, o.tokens) for k, o in again.items()} == {k: (o.text, o.tokens) for k, o in done.items()}


@needs_models
def test_the_playground_runs_an_arm_with_the_runs_direction(runs: tuple[Store, Store]) -> None:
    straight, _ = runs
    answer = reply(straight, "arms", Chat(), OPENINGS[1], "sad (random)", max_new_tokens=12)
    assert answer.turns[-1].steered == outputs(straight)[("sad (random)", 1)].text


@needs_models
def test_removing_null_arms_keeps_the_real_variants_outputs(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "copy.db"))
    spec = parsed(experiment(null_arms=True))
    assert run_spec(store, spec, "arms.yaml", RunOptions(batch_size=20, device="cpu")).status == "done"
    with store.session() as session:
        experiment_row = get_experiment(session, "arms")
        stored = stored_spec(experiment_row)
        sad_only = replace(
            stored, variants=tuple(replace(v, null_arms=()) if v.name == "sad" else v for v in stored.variants)
        )
        save_spec(session, experiment_row, sad_only)
    after = outputs(store)
    assert {v for v, _ in after} == {"baseline", "sad", "sad_negated"}
    assert len(after) == 12, "the real variant keeps its outputs; only the arms' go"


@needs_models
def test_compare_gets_paired_differences_and_win_rates_against_each_arm(runs: tuple[Store, Store]) -> None:
    straight, _ = runs
    with straight.session() as session:
        experiment_id = get_experiment(session, "arms").id
        ids = {(g.variant, g.prompt_index): g.id for g in repo.generation_rows(session, experiment_id)}
        names = {row.id: row.name for row in get_experiment(session, "arms").variants}
        scores = {(names[v], p, m): x for v, p, _s, m, x in repo.score_rows(session, experiment_id)}

    def vote(rater: str, left: str, right: str, prompt: int, choice: str, **extra: Any) -> repo.NewRating:
        return repo.NewRating(rater, ids[(left, prompt)], ids[(right, prompt)], choice, **extra)

    real, arm = "sad", "sad (random)"
    votes = [
        vote("alice", real, arm, 0, "left"),  # win
        vote("alice", arm, real, 1, "right"),  # win
        vote("alice", real, arm, 2, "right"),  # loss
        vote("alice", real, arm, 3, "tie"),
        vote("bob", arm, real, 0, "right"),  # win
        vote("bob", real, arm, 1, "left"),  # win
        vote("bob", arm, real, 2, "left"),  # loss
        vote("bob", arm, real, 3, "both_bad"),
        vote("carol", real, arm, 0, "left"),  # win
        vote("carol", arm, real, 1, "right"),  # win
        vote("carol", real, arm, 0, "right", repeat=1),  # a repeat measures carol, not the variants
        vote("alice", real, "baseline", 0, "left"),  # another pair of variants
        *(vote("mallory", real, arm, p, "right") for p in range(4)),  # left out below
        *(vote("judge", real, arm, p, "left" if p < 3 else "right", rater_kind="judge") for p in range(4)),
    ]
    with straight.session() as session:
        repo.add_ratings(session, experiment_id, votes)

    results = null_arm_comparison(straight, "arms", exclude={"mallory"})
    assert [(r.variant, r.arm, r.arm_variant) for r in results] == [
        ("sad", "random", "sad (random)"),
        ("sad", "flipped", "sad (flipped)"),
    ]
    random_arm, flipped_arm = results
    human = random_arm.votes["human"]
    assert (human.wins, human.losses, human.ties, human.both_bad) == (6, 2, 1, 1)
    assert human.estimate == wilson_interval(6, 8) and human.estimate.n == 8
    judge = random_arm.votes["judge"]
    assert (judge.wins, judge.losses, judge.estimate.n) == (3, 1, 4)
    assert judge.verdict() == "too few votes (n=4 decisive votes; needs 5)"
    assert flipped_arm.votes["human"].votes == 0

    counted = null_arm_comparison(straight, "arms")
    assert counted[0].votes["human"].losses == 6, "without the exclusion mallory's four votes count"

    for result in results:
        assert list(result.scores) == ["sad_words", "fluency_ppl"]
        for metric, difference in result.scores.items():
            expected = [scores[("sad", p, metric)] - scores[(result.arm_variant, p, metric)] for p in range(4)]
            assert (difference.prompts, difference.pairs) == (4, 4)
            assert math.isclose(difference.value, sum(expected) / 4, rel_tol=1e-9, abs_tol=1e-12)
            assert difference.low <= difference.value <= difference.high
            assert score_verdict(difference) in (
                "the real variant scores higher",
                "the real variant scores lower",
                "no detectable difference",
            )


def test_an_experiment_without_arms_has_no_arm_figures(store: Store) -> None:
    spec = parsed(experiment())
    with store.session() as session:
        save_spec(session, None, spec)
    assert null_arm_comparison(store, "arms") == []
