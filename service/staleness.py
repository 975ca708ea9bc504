"""Which stored figures no longer follow the experiment's definition, each with a one-sentence reason.

A figure is stale when the hash of what it was computed from (its ``source_hash``) differs
from the hash of today's definition (:mod:`service.provenance`), or is empty: figures stored
before SteerLab recorded hashes have unknown provenance and are not trusted. The next run
recomputes stale figures; scores can also be recomputed at once with ``steerlab score NAME``.
Figures not computed yet (a new scorer) are missing, not stale: pages show them as missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from db import figures
from db.store import Store
from service.catalog import get_experiment, stored_spec
from service.provenance import FLUENCY, fluency_hash, scorer_hash, variant_figures_hash


@dataclass(frozen=True)
class StaleFigure:
    kind: str  # "score" (per output, of a scorer or fluency) or "variant figures"
    name: str  # the scorer's (or fluency's) name, or the variant's
    count: int  # stale stored values
    reason: str  # one sentence

    def __str__(self) -> str:
        return self.reason


def stale_figures(store: Store, name: str) -> list[StaleFigure]:
    """Every group of stale figures of experiment ``name`` (empty when everything is current)."""
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        score_sources = figures.generation_metric_sources(session, experiment.id)
        variant_sources = figures.variant_figure_sources(session, experiment.id)
        variant_ids = {v.name: v.id for v in experiment.variants}
    out = []
    current = {s.name: (scorer_hash(spec, s), _score_inputs(s.needs_references)) for s in spec.scorers}
    current[FLUENCY] = (fluency_hash(spec), "the model it is measured under")
    for metric, (source, inputs) in current.items():
        by_source = score_sources.get(metric, {})
        stale = sum(n for h, n in by_source.items() if h != source)
        if stale:
            unknown = by_source.get("", 0) == stale
            out.append(
                StaleFigure(
                    "score",
                    metric,
                    stale,
                    f"{stale} '{metric}' scores "
                    + ("were stored before SteerLab recorded what scores are computed from"
                       if unknown else f"were computed before {inputs} changed")
                    + "; they are recomputed at the next run, or now with `steerlab score "
                    + f"{name}`.",
                )
            )  # fmt: skip
    for variant in spec.variants:
        stored = variant_sources.get(variant_ids.get(variant.name, -1), set())
        if stored and stored != {variant_figures_hash(spec, variant)}:
            unknown = stored == {""}
            out.append(
                StaleFigure(
                    "variant figures",
                    variant.name,
                    1,
                    f"The side effects and compute figures of variant '{variant.name}' "
                    + ("were stored before SteerLab recorded what they are measured from"
                       if unknown else "were measured before its definition, vectors, training texts or the "
                       "probe and neutral prompts changed")
                    + "; they are measured again at the next run.",
                )
            )  # fmt: skip
    return out


def _score_inputs(needs_references: bool) -> str:
    return "the scorer's definition or the references" if needs_references else "the scorer's definition"


def warning(stale: list[StaleFigure]) -> str:
    """One paragraph for a page or the command line; "" when nothing is stale."""
    if not stale:
        return ""
    return "Stale figures (shown as stored, but computed from an older definition): " + " ".join(
        s.reason for s in stale
    )


def all_current(store: Store, name: str) -> bool:
    """Whether a run would have nothing to do: every output scored by every scorer and by
    fluency, every variant measured, and all of it from today's definition.

    Outputs themselves are counted by the caller; this looks only at derived figures.
    """
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        outputs = figures.generation_count(session, experiment.id)
        score_sources = figures.generation_metric_sources(session, experiment.id)
        variant_sources = figures.variant_figure_sources(session, experiment.id)
        variant_ids = {v.name: v.id for v in experiment.variants}
    wanted = {s.name: scorer_hash(spec, s) for s in spec.scorers}
    wanted[FLUENCY] = fluency_hash(spec)
    for metric, source in wanted.items():
        if score_sources.get(metric, {}) != {source: outputs}:
            return False
    return all(
        variant_sources.get(variant_ids.get(v.name, -1), set()) == {variant_figures_hash(spec, v)}
        for v in spec.variants
    )
