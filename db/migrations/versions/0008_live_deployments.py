"""Live A/B deployments: deployments and their arms, served responses, feedback, preferences.

Only new tables: every row stored before this revision is kept as it was.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("baseline_variant_id", sa.Integer(), nullable=False),
        sa.Column("show_variant", sa.Boolean(), nullable=False),
        sa.Column("live", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=320), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["baseline_variant_id"], ["variants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_index("ix_deployments_experiment_id", "deployments", ["experiment_id"])
    op.create_table(
        "deployment_arms",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("variant_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("stopped", sa.Boolean(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stopped_by", sa.String(length=320), nullable=False),
        sa.CheckConstraint("weight >= 0", name="arm_weight_not_negative"),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["variant_id"], ["variants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("deployment_id", "variant_id", name="one_arm_per_variant"),
    )
    op.create_index("ix_deployment_arms_deployment_id", "deployment_arms", ["deployment_id"])
    op.create_table(
        "served_responses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("response_id", sa.String(length=100), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=True),
        sa.Column("experiment_id", sa.Integer(), nullable=True),
        sa.Column("assigned_variant_id", sa.Integer(), nullable=True),
        sa.Column("served_variant_id", sa.Integer(), nullable=True),
        sa.Column("steering_json", sa.Text(), nullable=False),
        sa.Column("user_key", sa.String(length=64), nullable=False),
        sa.Column("endpoint", sa.String(length=16), nullable=False),
        sa.Column("request_text", sa.Text(), nullable=False),
        sa.Column("response_text", sa.Text(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("first_token_seconds", sa.Float(), nullable=False),
        sa.Column("latency_seconds", sa.Float(), nullable=False),
        sa.Column("finish_reason", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("endpoint IN ('chat', 'completions')", name="served_endpoint"),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["assigned_variant_id"], ["variants.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["served_variant_id"], ["variants.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("response_id"),
    )
    op.create_index("ix_served_responses_experiment_id", "served_responses", ["experiment_id"])
    op.create_index("ix_served_responses_deployment_served", "served_responses", ["deployment_id", "served_variant_id"])
    op.create_table(
        "response_feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("response_id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.String(length=64), nullable=False),
        sa.Column("thumbs", sa.String(length=4), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("thumbs IS NULL OR thumbs IN ('up', 'down')", name="feedback_thumbs"),
        sa.CheckConstraint("score IS NULL OR (score >= 0 AND score <= 1)", name="feedback_score"),
        sa.ForeignKeyConstraint(["response_id"], ["served_responses.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("response_id", "user_key", name="one_feedback_per_user"),
    )
    op.create_index("ix_response_feedback_response_id", "response_feedback", ["response_id"])
    op.create_table(
        "response_preferences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=False),
        sa.Column("preferred_id", sa.Integer(), nullable=False),
        sa.Column("other_id", sa.Integer(), nullable=False),
        sa.Column("pair_low_id", sa.Integer(), nullable=False),
        sa.Column("pair_high_id", sa.Integer(), nullable=False),
        sa.Column("user_key", sa.String(length=64), nullable=False),
        sa.Column("tie", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["preferred_id"], ["served_responses.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["other_id"], ["served_responses.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("pair_low_id", "pair_high_id", "user_key", name="one_preference_per_pair"),
    )
    op.create_index("ix_response_preferences_deployment_id", "response_preferences", ["deployment_id"])


def downgrade() -> None:
    op.drop_table("response_preferences")
    op.drop_table("response_feedback")
    op.drop_table("served_responses")
    op.drop_table("deployment_arms")
    op.drop_table("deployments")
