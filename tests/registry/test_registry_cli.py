"""``learner models ...`` and ``learner registry ...``: the registry from the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pyarrow as pa
import pytest

from openlearner import Workspace
from openlearner.cli.main import main
from openlearner.models import GBDTClassifier
from openlearner.storage import LocalArtifactStore


def _fit(columns: list[str]) -> tuple[GBDTClassifier, pa.Table]:
    rng = np.random.default_rng(len(columns))
    X = pa.table({c: rng.normal(size=200) for c in columns})
    y = (X.column(columns[0]).to_numpy() > 0).astype(int)
    return GBDTClassifier(num_trees=3, seed=0).fit(X, y), X


@pytest.fixture
def home(workspace: Workspace) -> str:
    """A workspace with ctr versions 1, 2 (two columns) and 3 (three columns); production → 1."""
    two, X2 = _fit(["a", "b"])
    three, X3 = _fit(["a", "b", "c"])
    workspace.registry.register("ctr", two, sample=X2, metrics={"auc": 0.7})
    workspace.registry.register("ctr", two, sample=X2)
    workspace.registry.register("ctr", three, sample=X3)
    workspace.registry.promote("ctr", 1)
    return str(workspace.root)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_versions_and_show(home: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--home", home, "models", "list")
    assert code == 0 and "ctr  versions: 3  (production→1)" in out
    code, out, _ = _run(capsys, "--home", home, "models", "versions", "ctr")
    assert code == 0 and out.splitlines()[0].startswith("1 [production]  ready") and "auc=0.7000" in out
    code, out, _ = _run(capsys, "--home", home, "models", "show", "ctr", "--alias", "production")
    assert code == 0 and "ctr version 1 (ready)" in out
    assert (
        "inputs     input FP32 [-1, 2]" in out and "outputs    label INT64 [-1], probability FP32 [-1]" in out
    )


def test_promote_rollback_history_and_archive(home: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--home", home, "models", "promote", "ctr", "2", "--alias", "production")
    assert code == 0 and "ctr production: version 1 → version 2" in out
    code, _, err = _run(capsys, "--home", home, "models", "promote", "ctr", "3")
    assert (
        code == 4 and err.startswith("error: cannot promote ctr version 3 to production") and "--force" in err
    )
    assert len(err.strip().splitlines()) == 1
    code, out, _ = _run(capsys, "--home", home, "models", "promote", "ctr", "3", "--force")
    assert code == 0 and "version 2 → version 3" in out
    code, out, _ = _run(capsys, "--home", home, "models", "promote", "ctr", "3", "--force")
    assert code == 0 and "ctr production: already version 3; nothing moved" in out
    code, out, _ = _run(capsys, "--home", home, "models", "rollback", "ctr", "--alias", "production")
    assert code == 0 and "version 3 → version 2 (rolled back)" in out
    code, out, _ = _run(capsys, "--home", home, "models", "history", "ctr", "--alias", "production")
    assert code == 0 and [line.split("  ")[-1] for line in out.splitlines()] == [
        "(new) → version 1",
        "version 1 → version 2",
        "version 2 → version 3",
        "version 3 → version 2",
    ]
    code, out, _ = _run(capsys, "--home", home, "models", "archive", "ctr", "1")
    assert code == 0 and "archived" in out
    code, _, err = _run(capsys, "--home", home, "models", "archive", "ctr", "2")
    assert code == 4 and "move them first" in err
    code, _, err = _run(capsys, "--home", home, "models", "promote", "ctr", "1", "--force")
    assert code == 4 and "archived" in err


def test_unknown_names_say_what_exists(home: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "--home", home, "models", "show", "nope")
    assert code == 3 and "registered models: ctr" in err
    code, _, err = _run(capsys, "--home", home, "models", "promote", "ctr", "9")
    assert code == 3 and "versions: 1, 2, 3" in err
    code, _, err = _run(capsys, "--home", home, "models", "rollback", "ctr", "--alias", "canary")
    assert code == 3 and "aliases: production" in err
    code, _, err = _run(capsys, "--home", home, "models", "export", "ctr", "--alias", "shadow")
    assert code == 3 and "no alias 'shadow'" in err


def test_export_writes_the_verified_graph(
    home: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out" / "ctr.onnx"
    code, out, _ = _run(
        capsys, "--home", home, "models", "export", "ctr", "--version", "3", "-o", str(target)
    )
    assert code == 0 and f"wrote {target}" in out
    graph = onnx.load_from_string(target.read_bytes())
    assert [i.name for i in graph.graph.input] == ["input"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ctr.onnx"]  # no temporary file left


def test_replicate_verify_and_repair(home: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replica = str(tmp_path / "replica")
    code, out, _ = _run(capsys, "--home", home, "registry", "replicate", "--to", replica)
    assert code == 0 and "replicated: 3 version(s), 3 artifact(s), 1 alias move(s)" in out
    code, out, _ = _run(capsys, "--home", home, "registry", "replicate", "--to", replica)
    assert code == 0 and "replicated: 0 version(s), 0 artifact(s), 0 alias move(s), 0 other row(s)" in out
    code, out, _ = _run(capsys, "--home", home, "registry", "verify")
    assert code == 0 and "verified 3 artifact(s): all present and intact" in out

    store = LocalArtifactStore(Path(home) / "artifacts")
    digest = next(p for p in (store.root / "sha256").rglob("*") if p.is_file())
    digest.write_bytes(b"bit rot")
    code, out, err = _run(capsys, "--home", home, "registry", "verify")
    assert code == 5 and "  corrupt: sha256:" in out and "1 corrupt of 3" in err and "--repair-from" in err
    code, out, _ = _run(capsys, "--home", home, "registry", "verify", "--repair-from", replica)
    assert code == 0 and "  repaired: sha256:" in out and "all present and intact" in out

    # In a disaster the replica folder opens as a workspace.
    assert _run(capsys, "--home", replica, "init")[0] == 0
    code, out, _ = _run(capsys, "--home", replica, "models", "list")
    assert code == 0 and "ctr  versions: 3  (production→1)" in out


def test_replicate_needs_a_target(home: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "--home", home, "registry", "replicate")
    assert code == 2 and "name the replica" in err
    code, _, err = _run(capsys, "--home", home, "registry", "replicate", "--to", "s3://bucket/x")
    assert code == 2 and "not a folder" in err
