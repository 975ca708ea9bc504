"""The schema of SteerLab 0.1 (schema version 1), which created its tables without Alembic.

A 0.1 store is stamped with this revision and then upgraded; nothing to do here.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass
