"""The metadata schema as SQLAlchemy Core tables (the migrations create exactly these)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

TS = sa.DateTime(timezone=True)

feature_objects = sa.Table(
    "feature_objects",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

materializations = sa.Table(
    "materializations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("view", sa.String(200), nullable=False, index=True),
    sa.Column("end_time", TS, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("stats", sa.JSON, nullable=True),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workflow", sa.String(200), nullable=False, index=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("started_at", TS, nullable=False),
    sa.Column("ended_at", TS, nullable=True),
    sa.Column("tags", sa.JSON, nullable=True),
    sa.Column("git_commit", sa.String(64), nullable=True),
    sa.Column("target", sa.String(500), nullable=True),
    sa.Column("executor", sa.String(20), nullable=True),
    sa.Column("outputs", sa.JSON, nullable=True),
    sa.Column("heartbeat_at", TS, nullable=True),
    sa.Column("driver", sa.JSON, nullable=True),
)

operator_runs = sa.Table(
    "operator_runs",
    metadata,
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

run_metrics = sa.Table(
    "run_metrics",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(40), nullable=False, index=True),
    sa.Column("node", sa.String(200), nullable=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("step", sa.Integer, nullable=True),
    sa.Column("logged_at", TS, nullable=False),
)

run_artifacts = sa.Table(
    "run_artifacts",
    metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("node", sa.String(200), primary_key=True),
    sa.Column("output", sa.Integer, primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("inputs", sa.JSON, nullable=False),
    sa.Column("created_at", TS, nullable=False),
)

schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("workflow", sa.String(200), primary_key=True),
    sa.Column("last_slot", TS, nullable=True),
    sa.Column("last_rows", sa.BigInteger, nullable=True),
    sa.Column("updated_at", TS, nullable=False),
)

models = sa.Table(
    "models",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("created_at", TS, nullable=False),
)

model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("model_name", sa.String(200), sa.ForeignKey("models.name"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("artifact_digest", sa.String(64), nullable=False),
    sa.Column("framework", sa.String(40), nullable=False),
    sa.Column("signature", sa.JSON, nullable=False),
    sa.Column("parity", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("libraries", sa.JSON, nullable=False),
    sa.Column("feature_service", sa.JSON, nullable=True),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("run_id", sa.String(40), nullable=True),
    sa.Column("training_set_digest", sa.String(64), nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", TS, nullable=False),
)

model_aliases = sa.Table(
    "model_aliases",
    metadata,
    sa.Column("model_name", sa.String(200), sa.ForeignKey("models.name"), primary_key=True),
    sa.Column("alias", sa.String(100), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

alias_history = sa.Table(
    "alias_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_name", sa.String(200), nullable=False, index=True),
    sa.Column("alias", sa.String(100), nullable=False),
    sa.Column("from_version", sa.Integer, nullable=True),
    sa.Column("to_version", sa.Integer, nullable=False),
    sa.Column("moved_by", sa.String(200), nullable=False),
    sa.Column("moved_at", TS, nullable=False),
)
