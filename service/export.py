"""Export an experiment as JSON (everything) or CSV (one row per generation)."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from db import repository as repo
from db import runs
from db.store import Store
from engine.conversation import Conversation, PromptItem
from service import audit
from service.access import LOCAL, Identity, require
from service.catalog import get_experiment, stored_spec
from service.comparison import compare
from service.comparison_export import comparison_data
from service.provenance import stored_model_source
from service.summary import variant_summaries


def _exporting(store: Store, who: Identity, name: str, what: str) -> None:
    """Exports un-blind the votes (they name the variants): check the role, and log it."""
    require(store, who, name, "analyst", f"downloading the {what} export")
    with store.session() as session:
        audit.record(session, who.user, "exported", name, what)


def html_report_for(store: Store, name: str, who: Identity = LOCAL) -> str:
    """The HTML report, for roles allowed to un-blind (it names the variants); logged."""
    from service.report import html_report  # the report itself is built from export_data

    _exporting(store, who, name, "HTML report")
    return html_report(store, name)


def export_data(store: Store, name: str, rows: bool = True, figures: bool = True) -> dict[str, Any]:
    """Everything about the experiment; ``rows=False`` leaves the generations and ratings lists empty
    (the report needs only the experiment, its prompts and variants), and ``figures=False`` leaves out
    Compare's figures (``comparison``), which the CSV does not hold."""
    summaries = {s.name: s for s in variant_summaries(store, name)}
    with store.session() as session:
        experiment = get_experiment(session, name)
        spec = stored_spec(experiment)
        scores = repo.generation_metrics(session, experiment.id) if rows else {}
        generations = repo.generation_rows(session, experiment.id) if rows else []
        ratings = repo.rating_rows(session, experiment.id) if rows else []
        run = runs.latest_run(session, experiment.id)
        return {
            "experiment": {
                "name": experiment.name,
                "description": experiment.description,
                "model": experiment.model_id,
                # The exact weights the last run loaded (a GGUF file's SHA-256, a hub revision); {} before a run.
                "model_source": stored_model_source(experiment.model_source),
                "generation": spec.generation.to_dict(),
                "definition_hash": experiment.definition_hash,
                "created_at": experiment.created_at.isoformat(),
                "last_run": None
                if run is None
                else {"id": run.id, "status": run.status, "done": run.done_units, "total": run.total_units},
                "spec": spec.to_dict(),
            },
            # A conversation's row text is its transcript; its messages come from the definition.
            "prompts": [_prompt_entry(p.position, p.text, spec.prompts[p.position]) for p in experiment.prompts],
            "variants": [
                {
                    "name": v.name,
                    "kind": v.kind,
                    "spec": next(x.to_dict() for x in spec.variants if x.name == v.name),  # the one stored definition
                    "compute": _clean(summaries[v.name].compute()),
                    "reversibility": _clean(summaries[v.name].reversibility()),
                    # The mean over prompts, its interval over prompts, and both sample sizes.
                    "scores": {
                        k: {
                            "mean": _num(e.value),
                            "ci95": [_num(e.low), _num(e.high)],
                            "n": e.prompts,
                            "prompts": e.prompts,
                            "generations": e.generations,
                        }
                        for k, e in summaries[v.name].scores.items()
                    },
                }
                for v in experiment.variants
            ],
            "generations": [
                {
                    "id": g.id,
                    "variant": g.variant,
                    "prompt": g.prompt,
                    "prompt_index": g.prompt_index,
                    "sample": g.sample_index,
                    "text": g.text,
                    "token_count": g.token_count,
                    "seconds": g.seconds,
                    "scores": scores.get(g.id, {}),
                }
                for g in generations
            ],
            # Every figure Compare shows (verdicts, ratings, raters, judges, null arms); None in rows=False.
            "comparison": comparison_data(compare(store, name)) if rows and figures else None,
            "ratings": [
                {
                    "rater": r.rater,
                    "left_generation": r.left_generation_id,
                    "right_generation": r.right_generation_id,
                    "left_variant": r.left_variant,
                    "right_variant": r.right_variant,
                    "choice": r.choice,
                    "rater_kind": r.rater_kind,
                    "repeat": r.repeat,
                    "created_at": r.created_at.isoformat(),
                }
                for r in ratings
            ],
        }


def export_json(store: Store, name: str, who: Identity = LOCAL) -> str:
    """Everything about the experiment, variant names included (analysts and owners only)."""
    _exporting(store, who, name, "JSON")
    return json.dumps(export_data(store, name), indent=2, ensure_ascii=False)


def export_csv(store: Store, name: str, who: Identity = LOCAL) -> str:
    """Generations with their rating tallies, spreadsheet-safe (analysts and owners only)."""
    _exporting(store, who, name, "CSV")
    data = export_data(store, name, figures=False)
    score_names = sorted({k for g in data["generations"] for k in g["scores"]})
    tallies: dict[int, dict[str, int]] = {}
    for r in data["ratings"]:
        for gid, side in ((r["left_generation"], "left"), (r["right_generation"], "right")):
            t = tallies.setdefault(gid, {"shown": 0, "wins": 0, "losses": 0, "ties": 0, "both_bad": 0})
            t["shown"] += 1
            if r["choice"] == side:
                t["wins"] += 1
            elif r["choice"] in ("left", "right"):
                t["losses"] += 1
            elif r["choice"] == "tie":
                t["ties"] += 1
            else:
                t["both_bad"] += 1
    out = io.StringIO()
    writer = _FormulaSafeWriter(csv.writer(out))
    rating_cols = ["shown", "wins", "losses", "ties", "both_bad"]
    writer.writerow(
        [
            "experiment",
            "variant",
            "prompt_index",
            "prompt",
            "prompt_messages",
            "sample",
            "text",
            "token_count",
            "seconds",
            *score_names,
            *rating_cols,
        ]
    )
    messages = {p["index"]: json.dumps(p["messages"], ensure_ascii=False) for p in data["prompts"] if "messages" in p}
    for g in data["generations"]:
        t = tallies.get(g["id"], {})
        writer.writerow(
            [
                data["experiment"]["name"],
                g["variant"],
                g["prompt_index"],
                g["prompt"],
                messages.get(g["prompt_index"], ""),
                g["sample"],
                g["text"],
                g["token_count"],
                f"{g['seconds']:.6f}",
                *[g["scores"].get(s, "") for s in score_names],
                *[t.get(c, 0) for c in rating_cols],
            ]
        )
    return out.getvalue()


def _prompt_entry(index: int, text: str, prompt: PromptItem) -> dict[str, Any]:
    """A prompt in the JSON export: its text (a conversation's transcript), and a conversation's messages."""
    entry: dict[str, Any] = {"index": index, "text": text}
    if isinstance(prompt, Conversation):
        entry["messages"] = [m.to_dict() for m in prompt.messages]
    return entry


def _num(value: float) -> float | None:
    # JSON has no NaN; a missing figure is null.
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _clean(values: dict[str, float]) -> dict[str, float | None]:
    return {k: _num(float(v)) for k, v in values.items()}


# A spreadsheet runs a cell that begins with one of these as a formula (=HYPERLINK(...),
# =cmd|' /C calc'!A0). As OWASP advises for CSV injection, such text cells get a leading
# apostrophe, which spreadsheets show as text. Numbers are written as numbers: a negative
# number is not a formula.
# Full-width forms too: some spreadsheets read them as the ASCII ones.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def neutralise(value: object) -> object:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class _FormulaSafeWriter:
    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def writerow(self, row: list[object]) -> None:
        self._writer.writerow([neutralise(v) for v in row])
