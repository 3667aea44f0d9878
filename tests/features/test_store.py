"""The Feature Store facade: apply/plan, training sets, materialize and online reads, bad input."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openlearner import Settings, Workspace
from openlearner.errors import Conflict, Invalid, NotFound
from openlearner.features import Aggregate, Entity, FeatureService, FeatureStore, FeatureView, Field, Source
from openlearner.features.online import SQLiteOnlineStore

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
USER = Entity("user", ["user_id"], description="a person who clicks")
AD = Entity("ad", ["ad_id"])
DAY_FEATURES = [
    Aggregate("amount", "count", "1h", name="clicks_1h"),
    Aggregate("amount", "sum", "1d", name="amount_1d"),
    Aggregate("amount", "mean", "1d", name="mean_1d"),
    Aggregate("country", "count_distinct", "1d", name="countries_1d"),
    Field("country"),
]


@pytest.fixture
def fs(workspace: Workspace) -> FeatureStore:
    return workspace.features


def clicks(start: datetime = T0) -> pa.Table:
    """User 1 clicks often, user 2 twice, user 3 once long before; ad ids ride along."""
    rows = [
        (1, 0, 3, "fr", 10),
        (1, 600, 4, "fr", 11),
        (1, 3000, None, "de", 10),
        (2, 1200, 7, "jp", 11),
        (2, 86_000, 1, "jp", 12),
        (3, -10 * 86_400, 9, "us", 10),
    ]
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "ts": pa.array([start + timedelta(seconds=r[1]) for r in rows], pa.timestamp("us", tz="UTC")),
            "amount": pa.array([r[2] for r in rows], pa.int64()),
            "country": pa.array([r[3] for r in rows], pa.string()),
            "ad_id": pa.array([r[4] for r in rows], pa.int64()),
        }
    )


def user_view(data: pa.Table | None = None, **options: Any) -> FeatureView:
    features = options.pop("features", DAY_FEATURES)
    return FeatureView(
        "user_stats",
        [options.pop("entity", USER)],
        Source.table(clicks() if data is None else data, timestamp="ts", name="clicks"),
        features,
        **options,
    )


def ad_view(data: pa.Table | None = None) -> FeatureView:
    return FeatureView(
        "ad_stats",
        [AD],
        Source.table(clicks() if data is None else data, timestamp="ts", name="clicks"),
        [Aggregate("amount", "count", "1d", name="shown_1d"), Field("country", name="last_country")],
    )


def spine(users: list[int], times: list[datetime], **extra: list[Any]) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "event_time": pa.array(times, pa.timestamp("us", tz="UTC")),
            **extra,
        }
    )


# -- apply and plan -------------------------------------------------------------------------------


def test_apply_stores_definitions_and_plan_reports_them(fs: FeatureStore) -> None:
    service = FeatureService("ranker", ["user_stats:clicks_1h", "ad_stats:shown_1d"])
    definitions = [USER, AD, [user_view(), ad_view()], service]
    assert [(c.kind, c.name, c.action) for c in fs.plan(definitions)] == [
        ("entity", "user", "create"),
        ("entity", "ad", "create"),
        ("feature_view", "user_stats", "create"),
        ("feature_view", "ad_stats", "create"),
        ("feature_service", "ranker", "create"),
    ]
    assert fs.catalog.specs("feature_view") == []  # plan stores nothing
    changes = fs.apply(definitions)
    assert [c.action for c in changes] == ["create"] * 5
    assert fs.entity("user") == USER
    assert fs.service("ranker") == service
    stored = fs.view("user_stats")
    assert stored == user_view()
    assert stored.source.data is not None  # re-attached in this process
    assert [v.name for v in fs.views()] == ["ad_stats", "user_stats"]
    spec = fs.catalog.get("feature_view", "user_stats")
    assert spec is not None
    assert spec["dtypes"] == {
        "clicks_1h": "BIGINT",
        "amount_1d": "BIGINT",
        "mean_1d": "DOUBLE",
        "countries_1d": "BIGINT",
        "country": "VARCHAR",
    }
    assert spec["key_types"] == {"user_id": "BIGINT"}
    assert [c.action for c in fs.plan(definitions)] == ["unchanged"] * 5
    assert [c.action for c in fs.apply(definitions)] == ["unchanged"] * 5


def test_compatible_changes_are_updates(fs: FeatureStore) -> None:
    fs.apply([USER, user_view()])
    grown = user_view(features=[*DAY_FEATURES, Aggregate("amount", "max", "1h")], owner="ads", ttl="1d")
    (change,) = fs.plan([grown])
    assert (change.action, change.breaking) == ("update", ())
    fs.apply([grown])
    assert fs.view("user_stats").owner == "ads"
    assert fs.view("user_stats").feature("amount_max_1h") == Aggregate("amount", "max", "1h")


def test_redescribed_entity_is_not_a_breaking_change(fs: FeatureStore) -> None:
    fs.apply([user_view()])
    renamed = Entity("customer", ["user_id"], description="renamed, same key")
    (change,) = fs.plan([user_view(entity=renamed)])
    assert (change.action, change.breaking) == ("update", ())


def test_removing_a_feature_is_refused_without_force(fs: FeatureStore) -> None:
    fs.apply([user_view()])
    shrunk = user_view(features=DAY_FEATURES[:-1])
    (change,) = fs.plan([shrunk])
    assert change.breaking == ("removes feature 'country'",)
    assert "breaking: removes feature 'country'" in str(change)
    with pytest.raises(Conflict, match=r"removes feature 'country'.*apply with force=True"):
        fs.apply([shrunk])
    assert fs.view("user_stats").feature("country") == Field("country")  # unchanged
    fs.apply([shrunk], force=True)
    with pytest.raises(NotFound, match="has no feature 'country'"):
        fs.view("user_stats").feature("country")


def test_changing_a_feature_type_is_refused_without_force(fs: FeatureStore) -> None:
    fs.apply([user_view()])
    data = clicks()
    retyped = data.set_column(3, "country", pa.array(range(data.num_rows), pa.int64()))
    with pytest.raises(Conflict, match="changes 'country' from VARCHAR to BIGINT"):
        fs.apply([user_view(retyped)])
    assert fs.catalog.get("feature_view", "user_stats")["dtypes"]["country"] == "VARCHAR"  # type: ignore[index]
    fs.apply([user_view(retyped)], force=True)
    assert fs.catalog.get("feature_view", "user_stats")["dtypes"]["country"] == "BIGINT"  # type: ignore[index]


def test_changing_join_keys_is_refused_without_force(fs: FeatureStore) -> None:
    fs.apply([user_view()])
    rekeyed = user_view(entity=Entity("user", ["ad_id"]))
    with pytest.raises(Conflict, match="changes the entities"):
        fs.apply([rekeyed])
    data = clicks()
    string_keys = data.set_column(0, "user_id", data.column("user_id").cast(pa.string()))
    with pytest.raises(Conflict, match="changes the entities"):
        fs.apply([user_view(string_keys)])
    fs.apply([rekeyed], force=True)
    assert fs.view("user_stats").join_keys == ("ad_id",)


def test_forced_change_drops_online_values_keyed_the_old_way(fs: FeatureStore) -> None:
    fs.apply([user_view()])
    fs.materialize(end=T0 + timedelta(hours=1))
    assert fs.online(["user_stats:country"], {"user_id": [1]})["user_stats__country"].to_pylist() == ["de"]
    fs.apply([user_view(entity=AD)], force=True)
    # User 1's row must not be served as ad 1's (both keys encode as [1]) or ad 10's.
    online = fs.online(["user_stats:country"], {"ad_id": [1, 10]}).to_pydict()
    assert online["user_stats__country__status"] == ["missing", "missing"]
    fs.materialize(end=T0 + timedelta(hours=1))
    online = fs.online(["user_stats:country"], {"ad_id": [1, 10]}).to_pydict()
    assert online["user_stats__country"] == [None, "de"]


def test_apply_is_all_or_nothing(fs: FeatureStore) -> None:
    broken = FeatureView("broken", [USER], Source.table(clicks(), timestamp="ts"), [Field("no_such_column")])
    with pytest.raises(Invalid, match="no_such_column"):
        fs.apply([USER, user_view(), broken])
    with pytest.raises(NotFound, match="has no feature 'clicks_1d'; did you mean 'clicks_1h'"):
        fs.apply([USER, user_view(), FeatureService("svc", ["user_stats:clicks_1d"])])
    for kind in ("entity", "feature_view", "feature_service"):
        assert fs.catalog.specs(kind) == []


def test_refused_apply_keeps_the_in_memory_data(fs: FeatureStore) -> None:
    fs.apply([user_view()])
    other = clicks(start=T0 + timedelta(days=30))
    with pytest.raises(Invalid):
        fs.apply(
            [
                user_view(other),
                FeatureView("bad", [USER], Source.table(other, timestamp="nope"), [Field("x")]),
            ]
        )
    out = fs.training_set(spine([1], [T0 + timedelta(hours=1)]), ["user_stats:clicks_1h"])
    assert out["user_stats__clicks_1h"].to_pylist() == [1]  # still the first data (the other has none)


def test_views_over_in_memory_tables_with_the_same_source_name(fs: FeatureStore) -> None:
    mine = clicks()
    theirs = mine.set_column(2, "amount", pa.array([100] * mine.num_rows, pa.int64()))
    a = FeatureView(
        "a", [USER], Source.table(mine, timestamp="ts"), [Aggregate("amount", "sum", "1d", name="s")]
    )
    b = FeatureView(
        "b", [USER], Source.table(theirs, timestamp="ts"), [Aggregate("amount", "sum", "1d", name="s")]
    )
    assert a.source.name == b.source.name == "src_table"
    fs.apply([a, b])
    out = fs.training_set(spine([1], [T0 + timedelta(hours=1)]), ["a:s", "b:s"])
    assert out["a__s"].to_pylist() == [7]
    assert out["b__s"].to_pylist() == [300]


def test_apply_validates_against_the_source(fs: FeatureStore, tmp_path: Path) -> None:
    with pytest.raises(
        Invalid, match=r"reads column 'amout', absent from .* its columns are user_id, ts, amount"
    ):
        fs.apply([user_view(features=[Field("amout")])])
    with pytest.raises(Invalid, match="mean needs a numeric or boolean column"):
        fs.apply([user_view(features=[Aggregate("country", "mean", "1h")])])
    with pytest.raises(Invalid, match="no join key column 'session_id'"):
        fs.apply([user_view(entity=Entity("session", ["session_id"]))])
    with pytest.raises(NotFound, match=r"no file matches .*missing\.parquet"):
        fs.apply(
            [
                FeatureView(
                    "f", [USER], Source.parquet(tmp_path / "missing.parquet", timestamp="ts"), [Field("a")]
                )
            ]
        )
    with pytest.raises(NotFound, match="no file matches"):
        fs.apply([Source.csv(tmp_path / "missing.csv", timestamp="ts")])
    with pytest.raises(
        Invalid, match="apply\\(\\) takes Entity, Source, FeatureView and FeatureService objects, not dict"
    ):
        fs.apply([{"name": "user"}])
    with pytest.raises(NotFound, match="no feature view 'nowhere'"):
        fs.plan([FeatureService("svc", ["nowhere:x"])])
    with pytest.raises(NotFound, match="has no feature 'clicks'; did you mean 'clicks_1h'"):
        fs.plan([user_view(), FeatureService("svc", ["user_stats:clicks"])])
    assert fs.catalog.specs("feature_view") == []


def test_file_sources_and_a_file_that_disappears(fs: FeatureStore, tmp_path: Path) -> None:
    path = tmp_path / "clicks.parquet"
    pq.write_table(clicks(), path)
    source = Source.parquet(path, timestamp="ts")
    view = FeatureView("files", [USER], source, [Aggregate("amount", "sum", "1d", name="s")])
    fs.apply([source, view])
    assert fs.catalog.get("source", source.name) == source.to_spec()
    assert fs.training_set(spine([1], [T0 + timedelta(hours=2)]), ["files:s"])["files__s"].to_pylist() == [7]
    path.unlink()
    with pytest.raises(NotFound, match="no file matches"):
        fs.training_set(spine([1], [T0]), ["files:s"])


def test_catalog_survives_reopening(database_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "ws", database_url=database_url)
    view = FeatureView(
        "files",
        [USER],
        Source.parquet(tmp_path / "clicks.parquet", timestamp="ts"),
        DAY_FEATURES,
        ttl="7d",
        tags=["ads"],
        inclusive=True,
    )
    pq.write_table(clicks(), tmp_path / "clicks.parquet")
    with Workspace.init(settings=settings) as ws:
        ws.features.apply([USER, view, FeatureService("svc", ["files:clicks_1h"])])
    with Workspace.open(settings=settings) as ws:
        assert ws.features.view("files") == view
        assert [c.action for c in ws.features.plan([USER, view])] == ["unchanged", "unchanged"]
        assert ws.features.service("svc").columns == ["files__clicks_1h"]


# -- references -----------------------------------------------------------------------------------


def test_unknown_references_suggest_close_names(fs: FeatureStore) -> None:
    with pytest.raises(NotFound, match="none is defined yet"):
        fs.training_set(spine([1], [T0]), ["user_stats:clicks_1h"])
    fs.apply([USER, user_view(), ad_view()])
    s = spine([1], [T0])
    with pytest.raises(
        NotFound, match="feature view 'user_stats' has no feature 'click_1h'; did you mean 'clicks_1h'"
    ):
        fs.training_set(s, ["user_stats:click_1h"])
    with pytest.raises(NotFound, match="no feature view 'user_stat'; did you mean 'user_stats'"):
        fs.training_set(s, ["user_stat:clicks_1h"])
    with pytest.raises(NotFound, match="no feature view 'zzz'; known: ad_stats, user_stats"):
        fs.training_set(s, ["zzz:clicks_1h"])
    with pytest.raises(NotFound, match="no entity 'usr'; did you mean 'user'"):
        fs.entity("usr")
    with pytest.raises(NotFound, match="no feature service 'ranker'"):
        fs.service("ranker")
    with pytest.raises(Invalid, match="must look like 'view:feature'"):
        fs.training_set(s, ["user_stats.clicks_1h"])
    with pytest.raises(Invalid, match="non-empty list"):
        fs.training_set(s, [])
    with pytest.raises(Invalid, match="non-empty list"):
        fs.training_set(s, "user_stats:clicks_1h")  # type: ignore[arg-type]
    with pytest.raises(Invalid, match="'user_stats:clicks_1h' is asked for twice"):
        fs.training_set(s, ["user_stats:clicks_1h", "user_stats:clicks_1h"])
    with pytest.raises(NotFound, match="did you mean 'clicks_1h'"):
        fs.online(["user_stats:clicks_1"], {"user_id": [1]})


# -- training sets --------------------------------------------------------------------------------


def test_training_set_several_views_and_entities(fs: FeatureStore) -> None:
    fs.apply(
        [USER, AD, user_view(), ad_view(), FeatureService("svc", ["ad_stats:shown_1d", "user_stats:country"])]
    )
    t = T0 + timedelta(hours=1)
    s = pa.table(
        {
            "ad_id": [10, 11, 99],
            "user_id": [2, 1, 1],
            "event_time": pa.array([t, t, t], pa.timestamp("us", tz="UTC")),
            "label": [0, 1, 0],
        }
    )
    out = fs.training_set(s, ["user_stats:clicks_1h", "ad_stats:shown_1d", "user_stats:mean_1d"])
    assert out.column_names == [
        "ad_id",
        "user_id",
        "event_time",
        "label",
        "user_stats__clicks_1h",
        "user_stats__mean_1d",
        "ad_stats__shown_1d",
    ]
    assert out.select(s.column_names).equals(s)
    # In (12:00, 13:00): user 1 clicked at 12:10 and 12:50 (amount null, not counted); user 2 at 12:20.
    assert out["user_stats__clicks_1h"].to_pylist() == [1, 1, 1]
    assert out["user_stats__mean_1d"].to_pylist() == [7.0, 3.5, 3.5]
    # ad 10: 12:00 (3) and 12:50 (null) -> one non-null amount; ad 11: 12:10, 12:20; ad 99: none
    assert out["ad_stats__shown_1d"].to_pylist() == [1, 2, 0]
    service = fs.training_set(s, fs.service("svc"))
    assert service.column_names[-2:] == ["ad_stats__shown_1d", "user_stats__country"]
    assert service["user_stats__country"].to_pylist() == ["jp", "de", "de"]


def test_training_set_accepts_pandas_and_dicts(fs: FeatureStore) -> None:
    fs.apply([user_view()])
    t = T0 + timedelta(hours=1)
    arrow = fs.training_set(spine([1, 2], [t, t]), ["user_stats:clicks_1h"])
    frame = pd.DataFrame({"user_id": [1, 2], "event_time": pd.to_datetime([t, t], utc=True)})
    from_pandas = fs.training_set(frame, ["user_stats:clicks_1h"])
    from_dict = fs.training_set({"user_id": [1, 2], "event_time": [t, t]}, ["user_stats:clicks_1h"])
    naive = fs.training_set(
        {"user_id": [1, 2], "event_time": [t.replace(tzinfo=None)] * 2}, ["user_stats:clicks_1h"]
    )
    expected = arrow["user_stats__clicks_1h"].to_pylist()
    assert expected == [1, 1]
    for out in (from_pandas, from_dict, naive):
        assert out["user_stats__clicks_1h"].to_pylist() == expected
    other = fs.training_set({"user_id": [1], "asked_at": [t]}, ["user_stats:clicks_1h"], timestamp="asked_at")
    assert other["user_stats__clicks_1h"].to_pylist() == [1]


def test_training_set_bad_input(fs: FeatureStore) -> None:
    fs.apply([user_view()])
    with pytest.raises(Invalid, match="spine must be a pyarrow Table, a pandas DataFrame or a dict"):
        fs.training_set([[1, T0]], ["user_stats:clicks_1h"])
    with pytest.raises(Invalid, match="spine: cannot build a table"):
        fs.training_set({"user_id": [1, 2], "event_time": [T0]}, ["user_stats:clicks_1h"])
    with pytest.raises(Invalid, match="spine has no join key 'user_id', which view 'user_stats' needs"):
        fs.training_set({"uid": [1], "event_time": [T0]}, ["user_stats:clicks_1h"])
    with pytest.raises(Invalid, match="spine has no 'event_time' column"):
        fs.training_set({"user_id": [1], "ts": [T0]}, ["user_stats:clicks_1h"])
    with pytest.raises(Invalid, match="join key 'user_id' is VARCHAR in the spine but BIGINT"):
        fs.training_set({"user_id": ["1"], "event_time": [T0]}, ["user_stats:clicks_1h"])


# -- materialize and online -----------------------------------------------------------------------


def _online_values(fs: FeatureStore, view: FeatureView, users: list[int]) -> dict[str, list[Any]]:
    refs = [f"{view.name}:{f.name}" for f in view.features]
    return fs.online(refs, {"user_id": users}).to_pydict()


def test_materialized_values_equal_the_training_set(fs: FeatureStore) -> None:
    view = user_view()
    fs.apply([USER, view])
    end = T0 + timedelta(hours=1, minutes=5)
    assert fs.materialize(end=end) == {"user_stats": 3}  # users 1, 2 and 3
    users = [1, 2, 3, 42]
    online = _online_values(fs, view, users)
    offline = fs.training_set(spine(users, [end] * 4), [f"user_stats:{f.name}" for f in view.features])
    for feature in view.features:
        column = f"user_stats__{feature.name}"
        assert online[column][:3] == offline[column].to_pylist()[:3], feature.name
        assert online[column + "__status"] == ["present", "present", "present", "missing"]
        assert online[column][3] is None
    # Event time: the entity's newest event before end.
    assert online["user_stats__event_time"] == [
        T0 + timedelta(seconds=3000),
        T0 + timedelta(seconds=1200),
        T0 - timedelta(days=10),
        None,
    ]
    assert online["user_stats__clicks_1h"][:3] == [1, 1, 0]
    assert online["user_stats__amount_1d"][:3] == [7, 7, None]
    assert online["user_stats__mean_1d"][:3] == [3.5, 7.0, None]
    assert online["user_id"] == users


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    log=st.lists(
        st.tuples(
            st.integers(0, 4),
            st.integers(0, 30),
            st.one_of(st.none(), st.integers(-3, 3)),
            st.sampled_from("ab"),
        ),
        max_size=25,
    ),
    end_s=st.integers(0, 35),
    inclusive=st.booleans(),
)
def test_materialize_matches_the_training_set_at_end(
    fs: FeatureStore, log: list[tuple[int, int, int | None, str]], end_s: int, inclusive: bool
) -> None:
    data = pa.table(
        {
            "user_id": pa.array([r[0] for r in log], pa.int64()),
            "ts": pa.array([T0 + timedelta(seconds=r[1]) for r in log], pa.timestamp("us", tz="UTC")),
            "amount": pa.array([r[2] for r in log], pa.int64()),
            "country": pa.array([r[3] for r in log], pa.string()),
        }
    )
    features = [
        Aggregate("amount", "count", "10s", name="n_10s"),
        Aggregate("amount", "sum", "5s", name="s_5s"),
        Aggregate("amount", "mean", "1m", name="mean_1m"),
        Aggregate("country", "last", "10s", name="last_country"),
        Field("amount"),
    ]
    view = user_view(data, features=features, inclusive=inclusive)
    fs.apply([view], force=True)
    fs.online_store.delete("user_stats")
    end = T0 + timedelta(seconds=end_s)
    fs.materialize(end=end)
    users = list(range(5))
    refs = [f"user_stats:{f.name}" for f in features]
    online = fs.online(refs, {"user_id": users}).to_pydict()
    offline = fs.training_set(spine(users, [end] * 5), refs).to_pydict()
    admitted = [(u, t) for u, t, _, _ in log if (t <= end_s if inclusive else t < end_s)]
    for user in users:
        newest = max((t for u, t in admitted if u == user), default=None)
        expected_time = None if newest is None else T0 + timedelta(seconds=newest)
        assert online["user_stats__event_time"][user] == expected_time
        for feature in features:
            column = f"user_stats__{feature.name}"
            status = online[column + "__status"][user]
            assert status == ("missing" if newest is None else "present")
            if status == "present":
                assert online[column][user] == offline[column][user], (feature.name, user)


def test_materialize_is_idempotent(fs: FeatureStore) -> None:
    view = user_view()
    fs.apply([USER, view])
    end = T0 + timedelta(hours=2)
    first = fs.materialize(end=end)
    before = _online_values(fs, view, [1, 2, 3])
    raw_before = fs.online_store.read_keys("user_stats", ["[1]", "[2]", "[3]"])
    assert fs.materialize(end=end.replace(tzinfo=None)) == first  # naive end is UTC
    assert _online_values(fs, view, [1, 2, 3]) == before
    assert fs.online_store.read_keys("user_stats", ["[1]", "[2]", "[3]"]) == raw_before
    assert fs.catalog.last_materialization("user_stats").end == end  # type: ignore[union-attr]


def test_rematerializing_later_overwrites_values_whose_events_left_the_window(fs: FeatureStore) -> None:
    view = user_view(features=DAY_FEATURES[:-1])  # aggregates only: all their events leave the windows
    fs.apply([USER, view])
    fs.materialize(end=T0 + timedelta(minutes=30))
    assert _online_values(fs, view, [1])["user_stats__clicks_1h"] == [2]
    later = T0 + timedelta(days=5)
    fs.materialize(end=later)
    online = _online_values(fs, view, [1, 2])
    offline = fs.training_set(spine([1, 2], [later, later]), ["user_stats:clicks_1h", "user_stats:amount_1d"])
    assert online["user_stats__clicks_1h"] == offline["user_stats__clicks_1h"].to_pylist() == [0, 0]
    assert online["user_stats__amount_1d"] == offline["user_stats__amount_1d"].to_pylist() == [None, None]


def test_materialize_only_sees_events_before_end(fs: FeatureStore) -> None:
    view = user_view()
    fs.apply([USER, view])
    fs.materialize(end=T0 + timedelta(seconds=600))  # the event at exactly +600 s is not before end
    online = _online_values(fs, view, [1, 2])
    assert online["user_stats__clicks_1h"] == [1, None]
    assert online["user_stats__clicks_1h__status"] == ["present", "missing"]
    assert online["user_stats__event_time"] == [T0, None]


def test_materialize_selected_views_and_online_views(fs: FeatureStore) -> None:
    offline_only = FeatureView(
        "offline_only", [USER], Source.table(clicks(), timestamp="ts"), [Field("amount")], online=False
    )
    fs.apply([USER, AD, user_view(), ad_view(), offline_only])
    end = T0 + timedelta(hours=1)
    assert set(fs.materialize(end=end)) == {"user_stats", "ad_stats"}
    assert fs.materialize(end=end, views=["offline_only"]) == {"offline_only": 3}
    with pytest.raises(NotFound, match="no feature view 'usr_stats'; did you mean 'user_stats'"):
        fs.materialize(end=end, views=["usr_stats"])
    with pytest.raises(Invalid, match="end must be a datetime"):
        fs.materialize(end="2024-01-01")  # type: ignore[arg-type]


def test_online_status_present_missing_and_expired(fs: FeatureStore) -> None:
    now = datetime.now(UTC)
    fresh = user_view(clicks(start=now - timedelta(hours=2)), ttl="1d")
    fs.apply([USER, fresh])
    fs.materialize(end=now)
    online = fs.online(["user_stats:country", "user_stats:amount_1d"], {"user_id": [1, 3, 9]}).to_pydict()
    # user 3's newest event is 10 days old: written with its old time, then expired by the TTL.
    assert online["user_stats__country__status"] == ["present", "expired", "missing"]
    assert online["user_stats__amount_1d__status"] == ["present", "expired", "missing"]
    assert online["user_stats__country"] == ["de", None, None]
    assert online["user_stats__amount_1d"] == [7, None, None]
    start = now - timedelta(hours=2)
    assert online["user_stats__event_time"] == [
        start + timedelta(seconds=3000),
        start - timedelta(days=10),
        None,
    ]


def test_values_expire_online_even_when_fresh_at_end(fs: FeatureStore) -> None:
    # Materialized as of a past end, the values were fresh then; online they are judged by now.
    fs.apply([USER, user_view(ttl="1d")])
    fs.materialize(end=T0 + timedelta(hours=1))
    online = fs.online(["user_stats:country", "user_stats:clicks_1h"], {"user_id": [1, 2, 7]}).to_pydict()
    assert online["user_stats__country__status"] == ["expired", "expired", "missing"]
    assert online["user_stats__clicks_1h__status"] == ["expired", "expired", "missing"]
    assert online["user_stats__country"] == [None, None, None]
    assert online["user_stats__event_time"] == [
        T0 + timedelta(seconds=3000),
        T0 + timedelta(seconds=1200),
        None,
    ]
    # Without a TTL the same values stay present.
    fs.apply([USER, user_view()])
    online = fs.online(["user_stats:country"], {"user_id": [1, 2, 7]}).to_pydict()
    assert online["user_stats__country__status"] == ["present", "present", "missing"]
    assert online["user_stats__country"] == ["de", "jp", None]


def test_feature_added_after_materialize_is_missing_until_the_next_one(fs: FeatureStore) -> None:
    fs.apply([USER, user_view()])
    end = T0 + timedelta(hours=1)
    fs.materialize(end=end)
    grown = user_view(features=[*DAY_FEATURES, Aggregate("amount", "max", "1d", name="max_1d")])
    fs.apply([grown])
    refs = ["user_stats:clicks_1h", "user_stats:max_1d"]
    online = fs.online(refs, {"user_id": [1]}).to_pydict()
    assert online["user_stats__clicks_1h__status"] == ["present"]
    assert online["user_stats__max_1d__status"] == ["missing"]
    assert online["user_stats__max_1d"] == [None]
    fs.materialize(end=end)
    online = fs.online(refs, {"user_id": [1]}).to_pydict()
    assert online["user_stats__max_1d__status"] == ["present"]
    assert online["user_stats__max_1d"] == [4]


def test_online_several_views_and_services(fs: FeatureStore) -> None:
    service = FeatureService("ranker", ["user_stats:clicks_1h", "ad_stats:last_country"])
    fs.apply([USER, AD, user_view(), ad_view(), service])
    fs.materialize(end=T0 + timedelta(hours=1))
    out = fs.online(
        fs.service("ranker"), pd.DataFrame({"user_id": [1, 2], "ad_id": [12, 11], "extra": ["x", "y"]})
    )
    assert out.column_names == [
        "user_id",
        "ad_id",
        "extra",
        "user_stats__event_time",
        "user_stats__clicks_1h",
        "user_stats__clicks_1h__status",
        "ad_stats__event_time",
        "ad_stats__last_country",
        "ad_stats__last_country__status",
    ]
    got = out.to_pydict()
    assert got["user_stats__clicks_1h"] == [1, 1]
    assert got["ad_stats__last_country"] == [None, "jp"]
    assert got["ad_stats__last_country__status"] == ["missing", "present"]


def test_online_bad_input(fs: FeatureStore) -> None:
    fs.apply([USER, AD, user_view(), ad_view()])
    fs.materialize(end=T0 + timedelta(hours=1))
    with pytest.raises(Invalid, match="entities lack join key\\(s\\) ad_id needed by view 'ad_stats'"):
        fs.online(["user_stats:clicks_1h", "ad_stats:shown_1d"], {"user_id": [1]})
    with pytest.raises(
        Invalid, match="entity key 'user_id' is string but view 'user_stats' stores it as BIGINT"
    ):
        fs.online(["user_stats:clicks_1h"], {"user_id": ["1"]})
    with pytest.raises(Invalid, match="entities must be a pyarrow Table"):
        fs.online(["user_stats:clicks_1h"], [1, 2])
    narrow = fs.online(["user_stats:clicks_1h"], pa.table({"user_id": pa.array([1], pa.int32())}))
    assert narrow["user_stats__clicks_1h"].to_pylist() == [1]  # any integer width matches


def test_failed_materialize_leaves_previous_values_readable(
    fs: FeatureStore, break_online_writes: Callable[[SQLiteOnlineStore], None]
) -> None:
    view = user_view()
    fs.apply([USER, view])
    fs.materialize(end=T0 + timedelta(minutes=30))
    before = _online_values(fs, view, [1, 2, 3])
    assert isinstance(fs.online_store, SQLiteOnlineStore)
    break_online_writes(fs.online_store)
    with pytest.raises(sqlite3.OperationalError):
        fs.materialize(end=T0 + timedelta(days=1))
    assert _online_values(fs, view, [1, 2, 3]) == before
    assert fs.catalog.last_materialization("user_stats").end == T0 + timedelta(minutes=30)  # type: ignore[union-attr]
