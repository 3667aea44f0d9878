"""``learner features``: plan, apply, materialize, describe, search and get from the command line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openlearner.cli.main import main

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
VIEW = """
import openlearner as ol
user = ol.Entity("user", join_keys=["user_id"])
stats = ol.FeatureView(
    "user_stats", entities=[user], owner="ads", tags=["ctr"], description="clicks of a user",
    source=ol.Source.parquet({path!r}, timestamp="event_time", name="events"),
    features=[ol.Aggregate("clicked", "{function}", window="1d", name="clicks_1d")])
"""


@pytest.fixture
def home(tmp_path: Path) -> str:
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 1, 2], pa.int64()),
                "event_time": pa.array([T0, T0, T0], pa.timestamp("us", tz="UTC")),
                "clicked": pa.array([1, 1, 0], pa.int64()),
            }
        ),
        tmp_path / "events.parquet",
    )
    for function in ("sum", "mean"):
        (tmp_path / f"{function}.py").write_text(
            VIEW.format(path=str(tmp_path / "events.parquet"), function=function)
        )
    return str(tmp_path / "ws")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plan_apply_materialize_get_describe(
    home: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "--home", home, "features", "apply", str(tmp_path / "sum.py"))
    assert code == 0 and "create    feature_view user_stats" in out
    code, out, _ = cli(capsys, "--home", home, "features", "plan", str(tmp_path / "sum.py"))
    assert code == 0 and "unchanged feature_view user_stats" in out
    code, out, _ = cli(capsys, "--home", home, "features", "materialize")
    assert code == 0 and "user_stats: 2 entities" in out
    code, out, _ = cli(
        capsys, "--home", home, "features", "get", "user_stats:clicks_1d", "--entity", "user_id=1,2,9"
    )
    assert code == 0
    lines = out.strip().splitlines()
    assert "user_stats__clicks_1d=2" in lines[0] and "status=present" in lines[0]
    assert "user_stats__clicks_1d=0" in lines[1]
    assert "status=missing" in lines[2]
    code, out, _ = cli(capsys, "--home", home, "features", "describe", "user_stats")
    assert code == 0 and "freshness: values as of" in out and "for 2 entities" in out and "mean 1" in out
    code, out, _ = cli(capsys, "--home", home, "features", "search", "clicks")
    assert code == 0 and out.startswith("user_stats [ctr]")


def test_breaking_change_is_refused_in_one_line_then_forced(
    home: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "--home", home, "features", "apply", str(tmp_path / "sum.py"))[0] == 0
    code, out, _ = cli(capsys, "--home", home, "features", "plan", str(tmp_path / "mean.py"))
    assert code == 0 and "breaking: changes 'clicks_1d' from BIGINT to DOUBLE" in out
    code, _, err = cli(capsys, "--home", home, "features", "apply", str(tmp_path / "mean.py"))
    assert (
        code == 4 and err.startswith("error: refusing breaking change") and len(err.strip().splitlines()) == 1
    )
    code, out, _ = cli(capsys, "--home", home, "features", "apply", "--force", str(tmp_path / "mean.py"))
    assert code == 0 and "update" in out


def test_bad_inputs_are_one_line(home: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "--home", home, "init")[0] == 0
    for args, phrase in [
        (("features", "apply", str(tmp_path / "nope.py")), "no definitions file"),
        (("features", "describe", "nope"), "no feature view 'nope'"),
        (("features", "get", "nope:x", "--entity", "user_id=1"), "no feature view 'nope'"),
        (("features", "get", "x", "--entity", "user_id=1"), "must look like 'view:feature'"),
        (("features", "materialize", "--end", "soon"), "not an ISO time"),
        (("features", "search", " "), "needs some text"),
    ]:
        code, _, err = cli(capsys, "--home", home, *args)
        assert code != 0 and err.startswith("error: ") and phrase in err, (args, err)
        assert len(err.strip().splitlines()) == 1
