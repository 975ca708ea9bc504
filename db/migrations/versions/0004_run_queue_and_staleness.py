"""Runs as queued jobs with leases; one active run per experiment in the database;
source hashes on derived figures; indexes for the rating queue at team scale.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

RUN_STATES = "('queued', 'running', 'done', 'cancelled', 'failed', 'interrupted')"
ACTIVE = "status IN ('queued', 'running')"


def upgrade() -> None:
    # Older SteerLabs left a 'running' row behind when their process died; the new index
    # allows one active run per experiment, so all but the newest become 'interrupted'
    # (running again resumes them, as before).
    op.execute(
        """
        UPDATE runs SET status = 'interrupted',
            error = 'its process ended before the run finished (found when the store was upgraded)'
        WHERE status = 'running'
          AND id NOT IN (SELECT MAX(id) FROM runs WHERE status = 'running' GROUP BY experiment_id)
        """
    )
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("run_status", type_="check")
        batch.create_check_constraint("run_status", f"status IN {RUN_STATES}")
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("options_json", sa.Text(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("requested_by", sa.String(320), nullable=False, server_default=""))
        batch.add_column(sa.Column("traceback", sa.Text(), nullable=False, server_default=""))
    op.create_index(
        "one_active_run_per_experiment",
        "runs",
        ["experiment_id"],
        unique=True,
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
    )
    # Plain ADD COLUMN: copying these big tables (batch mode) would be slow on a team's store.
    op.add_column("variant_metrics", sa.Column("source_hash", sa.String(64), nullable=False, server_default=""))
    op.add_column("generation_metrics", sa.Column("source_hash", sa.String(64), nullable=False, server_default=""))
    op.create_index("ix_ratings_experiment_rater", "ratings", ["experiment_id", "rater"])
    op.create_index("ix_ratings_left_generation_id", "ratings", ["left_generation_id"])
    op.create_index("ix_ratings_right_generation_id", "ratings", ["right_generation_id"])


def downgrade() -> None:
    op.drop_index("ix_ratings_right_generation_id", "ratings")
    op.drop_index("ix_ratings_left_generation_id", "ratings")
    op.drop_index("ix_ratings_experiment_rater", "ratings")
    op.drop_column("generation_metrics", "source_hash")
    op.drop_column("variant_metrics", "source_hash")
    op.drop_index("one_active_run_per_experiment", "runs")
    op.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'queued'")
    with op.batch_alter_table("runs") as batch:
        for column in ("traceback", "requested_by", "options_json", "attempts", "heartbeat_at", "lease_expires_at"):
            batch.drop_column(column)
        batch.drop_constraint("run_status", type_="check")
        batch.create_check_constraint(
            "run_status", "status IN ('running', 'done', 'cancelled', 'failed', 'interrupted')"
        )
