"""Flow: run tags and heartbeats, operator executions, stepped metrics, artifact lineage, schedules.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("tags", sa.JSON, nullable=True))
        batch.add_column(sa.Column("git_commit", sa.String(64), nullable=True))
        batch.add_column(sa.Column("target", sa.String(500), nullable=True))
        batch.add_column(sa.Column("executor", sa.String(20), nullable=True))
        batch.add_column(sa.Column("outputs", sa.JSON, nullable=True))
        batch.add_column(sa.Column("heartbeat_at", TS, nullable=True))
        batch.add_column(sa.Column("driver", sa.JSON, nullable=True))
    op.create_table(
        "operator_runs",
        sa.Column("run_id", sa.String(40), primary_key=True),
        sa.Column("node", sa.String(200), primary_key=True),
        sa.Column("operator", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("cache_key", sa.String(64), nullable=True, index=True),
        sa.Column("cache_hit", sa.Boolean, nullable=False),
        sa.Column("resources", sa.JSON, nullable=False),
        sa.Column("inputs", sa.JSON, nullable=False),
        sa.Column("outputs", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("ended_at", TS, nullable=True),
    )
    op.create_table(
        "run_metrics",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(40), nullable=False, index=True),
        sa.Column("node", sa.String(200), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("step", sa.Integer, nullable=True),
        sa.Column("logged_at", TS, nullable=False),
    )
    op.create_table(
        "run_artifacts",
        sa.Column("run_id", sa.String(40), primary_key=True),
        sa.Column("node", sa.String(200), primary_key=True),
        sa.Column("output", sa.Integer, primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("inputs", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "schedules",
        sa.Column("workflow", sa.String(200), primary_key=True),
        sa.Column("last_slot", TS, nullable=True),
        sa.Column("last_rows", sa.BigInteger, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
    )
