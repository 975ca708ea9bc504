"""Peak memory in 64 bits: a batch's peak on a GPU (gigabytes) overflowed PostgreSQL's 32-bit integer.

SQLite's INTEGER is 64 bits already, so only PostgreSQL changes; every row is kept as it was.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column(
            "generations",
            "peak_memory_bytes",
            type_=sa.BigInteger(),
            existing_type=sa.Integer(),
            existing_nullable=False,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column(
            "generations",
            "peak_memory_bytes",
            type_=sa.Integer(),
            existing_type=sa.BigInteger(),
            existing_nullable=False,
        )
