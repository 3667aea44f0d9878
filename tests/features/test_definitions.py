"""Feature definitions: validation of every object, durations, references and spec round-trips."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from openlearner.errors import Invalid, NotFound
from openlearner.features import (
    Aggregate,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Source,
    parse_duration,
)
from openlearner.features.definitions import AGGREGATIONS, column_name, flatten, split_ref

USER = Entity("user", ["user_id"])
EVENTS = pa.table({"user_id": [1], "ts": pa.array([0], pa.timestamp("us", tz="UTC")), "amount": [2]})


def json_round_trip(spec: dict[str, Any]) -> dict[str, Any]:
    """What the catalog gives back: the spec after a trip through JSON."""
    result: dict[str, Any] = json.loads(json.dumps(spec))
    return result


# -- durations and references ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1h", timedelta(hours=1)),
        ("7d", timedelta(days=7)),
        (" 2h ", timedelta(hours=2)),
        ("36500d", timedelta(days=36500)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["0s", "0d", "1.5h", "1w", "h", "-1h", "", "1H", "1 hour", "1h30m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(
        Invalid, match=r"is not a duration: write a positive whole number followed by s, m, h or d"
    ):
        parse_duration(text)


@pytest.mark.parametrize("value", [3600, None, timedelta(hours=1)])
def test_parse_duration_rejects_non_strings(value: object) -> None:
    with pytest.raises(Invalid, match="is not a duration"):
        parse_duration(value)  # type: ignore[arg-type]


def test_split_ref_and_column_name() -> None:
    assert split_ref("user_stats:ctr_7d") == ("user_stats", "ctr_7d")
    assert column_name("user_stats", "ctr_7d") == "user_stats__ctr_7d"


@pytest.mark.parametrize("ref", ["user_stats", "a:b:c", ":b", "a:", ":", "user_stats.ctr", 3, None])
def test_split_ref_rejects(ref: object) -> None:
    with pytest.raises(Invalid, match="must look like 'view:feature'"):
        split_ref(ref)  # type: ignore[arg-type]


# -- entities -------------------------------------------------------------------------------------


def test_entity() -> None:
    entity = Entity("ad", ["advertiser_id", "ad_id"], description="an ad")
    assert entity.join_keys == ("advertiser_id", "ad_id")
    assert Entity.from_spec(json_round_trip(entity.to_spec())) == entity
    assert entity.to_spec() == {"name": "ad", "join_keys": ["advertiser_id", "ad_id"], "description": "an ad"}


@pytest.mark.parametrize("name", ["1user", "user-id", "a__b", "", "user id", None, 3])
def test_entity_rejects_bad_names(name: object) -> None:
    with pytest.raises(Invalid, match=r"name .* is not valid: use letters, digits and single underscores"):
        Entity(name, ["user_id"])  # type: ignore[arg-type]
    with pytest.raises(Invalid, match=r"join key name .* is not valid"):
        Entity("user", [name])  # type: ignore[list-item]


@pytest.mark.parametrize("keys", ["user_id", [], ()])
def test_entity_needs_a_list_of_join_keys(keys: Any) -> None:
    with pytest.raises(Invalid, match=r"needs join_keys as a list of column names, e\.g\. \['user_id'\]"):
        Entity("user", keys)


# -- sources --------------------------------------------------------------------------------------


def test_file_sources_resolve_paths_and_name_themselves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    parquet = Source.parquet("data/clicks-2024.parquet", timestamp="ts")
    assert parquet.location == str(tmp_path / "data" / "clicks-2024.parquet")
    assert parquet.name == "src_clicks_2024_parquet"
    assert Source.parquet("data/*.parquet", timestamp="ts").name == "src_data"
    assert Source.csv("~/x.csv", timestamp="ts").location == str(Path("~/x.csv").expanduser())
    csv = Source.csv(tmp_path / "log.csv", timestamp="time", name="click_log")
    assert (csv.source_kind, csv.name, csv.timestamp) == ("csv", "click_log", "time")
    for source in (parquet, csv):
        assert Source.from_spec(json_round_trip(source.to_spec())) == source


def test_table_source() -> None:
    source = Source.table(EVENTS, timestamp="ts")
    assert (source.source_kind, source.location, source.name) == ("table", None, "src_table")
    assert source.data is EVENTS
    assert source.to_spec() == {"name": "src_table", "kind": "table", "location": None, "timestamp": "ts"}
    rebuilt = Source.from_spec(json_round_trip(source.to_spec()))
    assert rebuilt.data is None  # the data never goes into the catalog
    assert rebuilt == source  # data does not take part in equality
    frame = Source.table(pd.DataFrame({"user_id": [1], "ts": pd.to_datetime(["2024-01-01"])}), timestamp="ts")
    assert isinstance(frame.data, pa.Table)
    assert frame.data.column_names == ["user_id", "ts"]


def test_source_rejects_bad_input() -> None:
    with pytest.raises(Invalid, match="needs a pyarrow Table or pandas DataFrame, not list"):
        Source.table([1, 2], timestamp="ts")
    with pytest.raises(Invalid, match="needs timestamp=<name of its event time column>"):
        Source.table(EVENTS, timestamp="")
    with pytest.raises(Invalid, match="source name 'my-source' is not valid"):
        Source.table(EVENTS, timestamp="ts", name="my-source")
    with pytest.raises(Invalid, match="source kind 'xml' is unknown"):
        Source.from_spec({"name": "s", "kind": "xml", "location": "/x.xml", "timestamp": "ts"})
    with pytest.raises(Invalid, match="a parquet source needs a file path"):
        Source("parquet", None, "ts", "s")


# -- features -------------------------------------------------------------------------------------


def test_aggregate() -> None:
    agg = Aggregate("amount", "sum", "7d")
    assert agg.name == "amount_sum_7d"
    assert agg.window_delta == timedelta(days=7)
    assert Aggregate("amount", "sum", " 7d ").name == "amount_sum_7d"  # one spelling per window
    assert Aggregate("amount", "sum", "07d").window == "7d"
    assert Aggregate("amount", "mean", "1h", name="avg_amount").name == "avg_amount"
    assert agg.to_spec() == {
        "type": "aggregate",
        "column": "amount",
        "function": "sum",
        "window": "7d",
        "name": "amount_sum_7d",
    }
    assert {Aggregate("x", fn, "1s").function for fn in AGGREGATIONS} == {
        "count",
        "sum",
        "mean",
        "min",
        "max",
        "count_distinct",
        "last",
    }


def test_aggregate_rejects_bad_input() -> None:
    with pytest.raises(Invalid, match="aggregation 'avg' is unknown; use one of count, sum, mean, min, max"):
        Aggregate("amount", "avg", "1h")
    with pytest.raises(Invalid, match=r"'1 week' is not a duration.*for example '1h' or '7d'"):
        Aggregate("amount", "sum", "1 week")
    with pytest.raises(Invalid, match="'0h' is not a duration"):
        Aggregate("amount", "sum", "0h")
    with pytest.raises(Invalid, match="feature name 'sum-7d' is not valid"):
        Aggregate("amount", "sum", "7d", name="sum-7d")
    with pytest.raises(Invalid, match="feature name 'my__sum' is not valid"):
        Aggregate("amount", "sum", "7d", name="my__sum")  # '__' separates view and feature


def test_field() -> None:
    assert Field("country").name == "country"
    assert Field("country", name="home_country").to_spec() == {
        "type": "field",
        "column": "country",
        "name": "home_country",
    }
    with pytest.raises(Invalid, match="feature name 'home country' is not valid"):
        Field("home country")


# -- views and services ---------------------------------------------------------------------------


def full_view(**options: Any) -> FeatureView:
    return FeatureView(
        "user_stats",
        [USER, Entity("ad", ["ad_id"])],
        Source.parquet("/data/clicks.parquet", timestamp="ts"),
        [Aggregate("amount", "count", "1h"), Field("country")],
        **options,
    )


def test_feature_view() -> None:
    view = full_view(
        ttl="2d", online=False, owner="ads", tags=["ctr", "daily"], description="d", inclusive=True
    )
    assert view.join_keys == ("user_id", "ad_id")
    assert view.ttl_delta == timedelta(days=2)
    assert view.tags == ("ctr", "daily")
    assert view.feature("country") == Field("country")
    assert FeatureView.from_spec(json_round_trip(view.to_spec())) == view
    spec = view.to_spec()
    assert spec["ttl"] == "2d" and spec["inclusive"] is True and spec["online"] is False
    defaults = full_view()
    assert (defaults.ttl_delta, defaults.online, defaults.inclusive) == (None, True, False)
    assert FeatureView.from_spec(json_round_trip(defaults.to_spec())) == defaults
    one = FeatureView("v", USER, Source.table(EVENTS, timestamp="ts"), [Field("amount")])  # type: ignore[arg-type]
    assert one.entities == (USER,)


def test_feature_view_spec_from_older_catalogs_uses_defaults() -> None:
    spec = full_view().to_spec()
    for optional in ("ttl", "online", "owner", "tags", "description", "inclusive"):
        del spec[optional]
    assert FeatureView.from_spec(spec) == full_view()


def test_feature_lookup_names_the_features_that_exist() -> None:
    with pytest.raises(NotFound, match="has no feature 'county'; it has amount_count_1h, country"):
        full_view().feature("county")


def test_feature_view_rejects_bad_input() -> None:
    source = Source.table(EVENTS, timestamp="ts")
    with pytest.raises(Invalid, match="feature view name 'user stats' is not valid"):
        FeatureView("user stats", [USER], source, [Field("amount")])
    with pytest.raises(Invalid, match=r"needs entities=\[Entity\(...\), ...\]"):
        FeatureView("v", [], source, [Field("amount")])
    with pytest.raises(Invalid, match="needs entities="):
        FeatureView("v", ["user_id"], source, [Field("amount")])  # type: ignore[list-item]
    with pytest.raises(Invalid, match=r"join key.*user_id in more than one entity"):
        FeatureView("v", [USER, Entity("buyer", ["user_id"])], source, [Field("amount")])
    with pytest.raises(Invalid, match=r"needs source=Source\.parquet"):
        FeatureView("v", [USER], "clicks.parquet", [Field("amount")])  # type: ignore[arg-type]
    with pytest.raises(Invalid, match=r"needs features=\[Aggregate"):
        FeatureView("v", [USER], source, [])
    with pytest.raises(Invalid, match=r"needs features=\[Aggregate"):
        FeatureView("v", [USER], source, ["amount"])  # type: ignore[list-item]
    with pytest.raises(Invalid, match="defines amount more than once"):
        FeatureView("v", [USER], source, [Field("amount"), Aggregate("x", "sum", "1h", name="amount")])
    with pytest.raises(Invalid, match="'forever' is not a duration"):
        FeatureView("v", [USER], source, [Field("amount")], ttl="forever")


def test_feature_service() -> None:
    service = FeatureService("ranker", ["user_stats:clicks", "ad_stats:ctr_1d"], description="ranking model")
    assert service.features == ("user_stats:clicks", "ad_stats:ctr_1d")
    assert service.columns == ["user_stats__clicks", "ad_stats__ctr_1d"]
    assert FeatureService.from_spec(json_round_trip(service.to_spec())) == service


def test_feature_service_rejects_bad_input() -> None:
    with pytest.raises(Invalid, match=r"needs features=\['view:feature', ...\]"):
        FeatureService("s", "user_stats:clicks")
    with pytest.raises(Invalid, match="needs features="):
        FeatureService("s", [])
    with pytest.raises(Invalid, match="must look like 'view:feature'"):
        FeatureService("s", ["user_stats.clicks"])
    with pytest.raises(Invalid, match="lists a feature twice"):
        FeatureService("s", ["v:a", "v:a"])
    with pytest.raises(Invalid, match="feature service name 'a__b' is not valid"):
        FeatureService("a__b", ["v:a"])


def test_definitions_are_frozen() -> None:
    with pytest.raises(AttributeError):
        USER.name = "other"  # type: ignore[misc]


def test_flatten_nested_lists() -> None:
    view = full_view()
    assert flatten([USER, [view, (USER,)], []]) == [USER, view, USER]
