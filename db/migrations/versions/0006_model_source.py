"""Which exact weights an experiment's model named: ``experiments.model_source``.

JSON written when a run loads the model: a GGUF file's name, size and SHA-256, a hub
model's cached revision, or a local folder's config hash (see engine.model_source).
Experiments stored before this revision start with ``{}`` and get it on their next run.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("experiments", sa.Column("model_source", sa.Text(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("model_source")
