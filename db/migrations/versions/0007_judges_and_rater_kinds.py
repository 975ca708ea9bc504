"""Judges' votes beside the humans': ``ratings.rater_kind`` and the ``judgements`` table.

``rater_kind`` tells a human's vote from an LLM judge's ("human" or "judge"); every vote
stored before this revision was a human's. A judge reads each pair in both orders; each
reading is a row of ``judgements`` (the order shown, the verdict, the label
probabilities), and the vote it makes of the two (a tie unless both agree) is a rating.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ratings") as batch:
        batch.add_column(sa.Column("rater_kind", sa.String(length=16), nullable=False, server_default="human"))
        batch.create_check_constraint("rating_rater_kind", "rater_kind IN ('human', 'judge')")
    op.create_table(
        "judgements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("judge", sa.String(length=200), nullable=False),
        sa.Column("left_generation_id", sa.Integer(), nullable=False),
        sa.Column("right_generation_id", sa.Integer(), nullable=False),
        sa.Column("choice", sa.String(length=16), nullable=False),
        sa.Column("p_left", sa.Float(), nullable=True),
        sa.Column("p_right", sa.Float(), nullable=True),
        sa.Column("answer", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("choice IN ('left', 'right', 'tie')", name="judgement_choice"),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["left_generation_id"], ["generations.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["right_generation_id"], ["generations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "experiment_id", "judge", "left_generation_id", "right_generation_id", name="one_judgement_per_order"
        ),
    )
    op.create_index("ix_judgements_experiment_id", "judgements", ["experiment_id"])
    op.create_index("ix_judgements_right_generation_id", "judgements", ["right_generation_id"])


def downgrade() -> None:
    op.drop_index("ix_judgements_right_generation_id", table_name="judgements")
    op.drop_index("ix_judgements_experiment_id", table_name="judgements")
    op.drop_table("judgements")
    with op.batch_alter_table("ratings") as batch:
        batch.drop_constraint("rating_rater_kind", type_="check")
        batch.drop_column("rater_kind")
