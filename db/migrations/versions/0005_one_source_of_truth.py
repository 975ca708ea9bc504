"""An experiment's definition is kept once, in ``experiments.spec_json``.

Variant and vector rows also held a copy of their definition (``spec_json``); readers
disagreed on which copy they read. Variant rows now keep only their identity (generations
and metrics point at them) and vector rows their extracted data and its provenance.

Before the columns go, every definition a row holds that the experiment's ``spec_json``
lacks is folded into it (a variant or vector added by a path that forgot the experiment's
copy), so no definition is lost. Where both hold a definition of the same name and they
differ, the experiment's copy wins: it is the one runs read, so it made the stored outputs.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import json
import logging
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

log = logging.getLogger("db.migrations")


def upgrade() -> None:
    connection = op.get_bind()
    experiments = connection.execute(sa.text("SELECT id, name, spec_json FROM experiments")).all()
    for experiment_id, name, spec_json in experiments:
        spec = json.loads(spec_json)
        variants = connection.execute(
            sa.text("SELECT id, name, spec_json FROM variants WHERE experiment_id = :e ORDER BY position, id"),
            {"e": experiment_id},
        ).all()
        vectors = connection.execute(
            sa.text("SELECT name, spec_json FROM vectors WHERE experiment_id = :e ORDER BY name"),
            {"e": experiment_id},
        ).all()
        folded = _fold(
            name, spec, [(n, json.loads(s)) for _, n, s in variants], [(n, json.loads(s)) for n, s in vectors]
        )
        if folded != spec:
            connection.execute(
                sa.text("UPDATE experiments SET spec_json = :s WHERE id = :e"),
                {"s": json.dumps(folded, ensure_ascii=False), "e": experiment_id},
            )
        # Row positions follow the definition's order, which runs pair the rows with.
        order = {v["name"]: i for i, v in enumerate(folded.get("variants", []))}
        for variant_id, variant_name, _ in variants:
            connection.execute(
                sa.text("UPDATE variants SET position = :p WHERE id = :v"),
                {"p": order[variant_name], "v": variant_id},
            )
    with op.batch_alter_table("variants") as batch:
        batch.drop_column("spec_json")
    with op.batch_alter_table("vectors") as batch:
        batch.drop_column("spec_json")
    _add_missing_variant_rows(connection)


def _add_missing_variant_rows(connection: sa.Connection) -> None:
    """A variant defined in ``spec_json`` without a row gets one (runs pair rows with definitions)."""
    for experiment_id, spec_json in connection.execute(sa.text("SELECT id, spec_json FROM experiments")).all():
        rows = {
            n
            for (n,) in connection.execute(
                sa.text("SELECT name FROM variants WHERE experiment_id = :e"), {"e": experiment_id}
            )
        }
        for position, variant in enumerate(json.loads(spec_json).get("variants", [])):
            if variant["name"] not in rows:
                connection.execute(
                    sa.text("INSERT INTO variants (experiment_id, position, name, kind) VALUES (:e, :p, :n, :k)"),
                    {"e": experiment_id, "p": position, "n": variant["name"], "k": variant.get("kind", "baseline")},
                )


def _fold(
    experiment: str,
    spec: dict[str, Any],
    variant_rows: list[tuple[str, dict[str, Any]]],
    vector_rows: list[tuple[str, dict[str, Any]]],
) -> dict[str, Any]:
    """``spec`` with the rows' definitions it lacks added (variants in the rows' order)."""
    out = dict(spec)
    listed = {v["name"]: v for v in spec.get("variants", [])}
    variants = [listed.get(name, definition) for name, definition in variant_rows]
    variants += [v for v in spec.get("variants", []) if v["name"] not in {n for n, _ in variant_rows}]
    for name, definition in variant_rows:
        if name not in listed:
            log.warning(
                "Experiment '%s': variant '%s' was defined only in its row; kept in the definition", experiment, name
            )
        elif listed[name] != definition:
            log.warning("Experiment '%s': variant '%s' had two definitions; the experiment's is kept", experiment, name)
    out["variants"] = variants
    vectors = dict(spec.get("vectors", {}))
    for name, definition in vector_rows:
        if name not in vectors:
            log.warning(
                "Experiment '%s': vector '%s' was defined only in its row; kept in the definition", experiment, name
            )
            vectors[name] = definition
    out["vectors"] = vectors
    return out


def downgrade() -> None:
    with op.batch_alter_table("variants") as batch:
        batch.add_column(sa.Column("spec_json", sa.Text(), nullable=False, server_default="{}"))
    with op.batch_alter_table("vectors") as batch:
        batch.add_column(sa.Column("spec_json", sa.Text(), nullable=False, server_default="{}"))
    connection = op.get_bind()
    for experiment_id, spec_json in connection.execute(sa.text("SELECT id, spec_json FROM experiments")).all():
        spec = json.loads(spec_json)
        for variant in spec.get("variants", []):
            connection.execute(
                sa.text("UPDATE variants SET spec_json = :s WHERE experiment_id = :e AND name = :n"),
                {"s": json.dumps(variant, ensure_ascii=False), "e": experiment_id, "n": variant["name"]},
            )
        for name, vector in spec.get("vectors", {}).items():
            connection.execute(
                sa.text("UPDATE vectors SET spec_json = :s WHERE experiment_id = :e AND name = :n"),
                {"s": json.dumps(vector, ensure_ascii=False), "e": experiment_id, "n": name},
            )
