"""One vote per (experiment, rater, pair) enforced by the database; run phase; non-finite flag.

SteerLab 0.1 checked for a rater's earlier vote before inserting, so one rater voting the
same pair from several tabs at once stored it several times. The upgrade keeps the first
of such votes and drops the copies, then adds the unique key that rules them out.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ratings") as batch:
        batch.add_column(sa.Column("pair_low_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("pair_high_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("repeat", sa.Integer(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE ratings SET "
        "pair_low_id = CASE WHEN left_generation_id < right_generation_id "
        "THEN left_generation_id ELSE right_generation_id END, "
        "pair_high_id = CASE WHEN left_generation_id < right_generation_id "
        "THEN right_generation_id ELSE left_generation_id END"
    )
    op.execute(
        "DELETE FROM ratings WHERE id NOT IN (SELECT keep FROM (SELECT MIN(id) AS keep FROM ratings "
        "GROUP BY experiment_id, rater, pair_low_id, pair_high_id) AS firsts)"
    )
    with op.batch_alter_table("ratings") as batch:
        batch.alter_column("pair_low_id", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("pair_high_id", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint(
            "one_vote_per_rater_and_pair", ["experiment_id", "rater", "pair_low_id", "pair_high_id", "repeat"]
        )
    # Plain ADD COLUMN: copying these tables (batch mode) is slow on a big store.
    op.add_column("runs", sa.Column("phase", sa.String(32), nullable=False, server_default=""))
    op.add_column("generations", sa.Column("non_finite", sa.Boolean(), nullable=False, server_default=sa.false()))
