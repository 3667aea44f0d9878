"""Settings: defaults under the workspace folder, overrides from OPENLEARNER_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from openlearner import Settings


def test_defaults_live_under_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENLEARNER_HOME", raising=False)
    settings = Settings()
    assert settings.home == tmp_path / ".openlearner"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / '.openlearner' / 'meta.db'}"
    assert settings.resolved_artifact_uri == str(tmp_path / ".openlearner" / "artifacts")
    assert settings.resolved_online_path == tmp_path / ".openlearner" / "online.db"
    assert settings.online_store == "sqlite"
    assert settings.executor == "local"


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENLEARNER_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("OPENLEARNER_DATABASE_URL", "postgresql://db/meta")
    monkeypatch.setenv("OPENLEARNER_AUTH_TOKEN", "s3cret")
    settings = Settings()
    assert settings.home == tmp_path / "elsewhere"
    assert settings.resolved_database_url == "postgresql://db/meta"
    assert settings.auth_token == "s3cret"


def test_unknown_backend_names_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENLEARNER_ONLINE_STORE", "cassandra")
    with pytest.raises(ValidationError, match="online_store"):
        Settings()
