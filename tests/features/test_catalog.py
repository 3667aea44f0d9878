"""Catalog browsing: search, describe (statistics, freshness, users), definitions files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import openlearner as ol
from openlearner.errors import Invalid, NotFound
from openlearner.features.files import definitions_from_file
from openlearner.features.store import statistics

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


def write_events(path: Path) -> Path:
    events = pa.table(
        {
            "user_id": pa.array([1, 1, 2, 3], pa.int64()),
            "event_time": pa.array([T0, T0 + timedelta(minutes=1), T0, T0], pa.timestamp("us", tz="UTC")),
            "clicked": pa.array([1, 0, 1, 0], pa.int64()),
            "country": ["fr", "fr", "us", None],
        }
    )
    pq.write_table(events, path)
    return path


DEFINITIONS = """
import openlearner as ol

user = ol.Entity("user", join_keys=["user_id"])
events = ol.Source.parquet({path!r}, timestamp="event_time", name="events")
views = [
    ol.FeatureView("user_stats", entities=[user], source=events, owner="ads", tags=["ctr"],
                   description="Click-through of a user",
                   features=[ol.Aggregate("clicked", "mean", window="7d", name="ctr_7d"),
                             ol.Field("country")]),
]
service = ol.FeatureService("ctr_v1", features=["user_stats:ctr_7d"])
"""


@pytest.fixture
def definitions(tmp_path: Path) -> Path:
    events = write_events(tmp_path / "events.parquet")
    file = tmp_path / "features.py"
    file.write_text(DEFINITIONS.format(path=str(events)))
    return file


def test_definitions_from_a_file_include_entities_and_sources(definitions: Path) -> None:
    found = definitions_from_file(definitions)
    kinds = [type(obj).__name__ for obj in found]
    assert kinds == ["Entity", "Source", "FeatureView", "FeatureService"]


def test_bad_definition_files(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no definitions file"):
        definitions_from_file(tmp_path / "absent.py")
    broken = tmp_path / "broken.py"
    broken.write_text("import openlearner as ol\n\nx = 1 / 0\n")
    with pytest.raises(Invalid, match=r"failed \(line 3\): ZeroDivisionError"):
        definitions_from_file(broken)
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(Invalid, match="defines no Entity"):
        definitions_from_file(empty)


def test_search_matches_names_tags_owner_description_and_features(
    workspace: ol.Workspace, definitions: Path
) -> None:
    workspace.features.apply(definitions_from_file(definitions))
    for text in ("user_st", "CTR", "ads", "click-through", "country"):
        assert [v.name for v in workspace.features.search(text)] == ["user_stats"], text
    assert workspace.features.search("nothing like it") == []
    with pytest.raises(Invalid, match="needs some text"):
        workspace.features.search("  ")


def test_describe_reports_types_freshness_statistics_and_services(
    workspace: ol.Workspace, definitions: Path
) -> None:
    workspace.features.apply(definitions_from_file(definitions))
    before = workspace.features.describe("user_stats")
    assert before.last_materialization is None
    assert before.dtypes == {"ctr_7d": "DOUBLE", "country": "VARCHAR"}
    assert before.services == ["ctr_v1"]
    end = datetime.now(UTC).replace(microsecond=0)
    workspace.features.materialize(end=end)
    after = workspace.features.describe("user_stats").last_materialization
    assert after is not None and after.end == end and after.rows == 3
    ctr = after.stats["ctr_7d"]
    assert ctr["rows"] == 3 and ctr["null_fraction"] == 0
    assert ctr["mean"] == pytest.approx((0.5 + 1 + 0) / 3) and ctr["min"] == 0 and ctr["max"] == 1
    assert after.stats["country"] == {"rows": 3, "null_fraction": pytest.approx(1 / 3), "distinct": 2}
    with pytest.raises(NotFound, match="did you mean 'user_stats'"):
        workspace.features.describe("user_stat")


def test_statistics_of_empty_and_all_null_columns() -> None:
    empty = statistics(pa.table({"a": pa.array([], pa.float64())}), ["a"])["a"]
    assert empty["rows"] == 0 and empty["null_fraction"] is None and empty["mean"] is None
    nulls = statistics(pa.table({"b": pa.array([None, None], pa.float64())}), ["b"])["b"]
    assert nulls["null_fraction"] == 1 and nulls["mean"] is None
