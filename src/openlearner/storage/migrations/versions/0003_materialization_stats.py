"""Feature statistics recorded with each materialization.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("materializations") as batch:
        batch.add_column(sa.Column("stats", sa.JSON, nullable=True))
