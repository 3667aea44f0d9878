"""The Feature Store over the Redis online store: the same online values as over SQLite, atomic
materialization, and a default key namespace per workspace (its id in ``workspace.json``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from openlearner import Settings, Workspace
from openlearner.errors import Unavailable
from openlearner.features import Aggregate, Entity, FeatureService, FeatureStore, FeatureView, Field, Source
from openlearner.features.online import OnlineStore, RedisOnlineStore

pytestmark = pytest.mark.redis

NOW = datetime.now(UTC).replace(microsecond=0)
USER = Entity("user", ["user_id"])
AD = Entity("ad", ["ad_id"])


def clicks() -> pa.Table:
    """Users 1-4 click ads over the last two days; user 4 only long ago (expired under a 1d TTL)."""
    rows = [
        (1, 10, -7_200, 3, "fr", True),
        (1, 11, -3_000, 4, "fr", False),
        (1, 10, -600, None, "de", True),
        (2, 11, -5_000, 7, "jp", False),
        (2, 12, -80_000, 1, "jp", True),
        (3, 10, -20, 9, "us", False),
        (4, 12, -150_000, 2, "br", True),
    ]
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "ad_id": pa.array([r[1] for r in rows], pa.int64()),
            "ts": pa.array([NOW + timedelta(seconds=r[2]) for r in rows], pa.timestamp("us", tz="UTC")),
            "amount": pa.array([r[3] for r in rows], pa.int64()),
            "country": pa.array([r[4] for r in rows], pa.string()),
            "clicked": pa.array([r[5] for r in rows], pa.bool_()),
        }
    )


def definitions() -> list[Any]:
    source = Source.table(clicks(), timestamp="ts", name="clicks")
    users = FeatureView(
        "user_stats",
        [USER],
        source,
        [
            Aggregate("amount", "count", "1h", name="clicks_1h"),
            Aggregate("amount", "sum", "3d", name="amount_3d"),
            Aggregate("clicked", "mean", "3d", name="ctr_3d"),
            Aggregate("country", "count_distinct", "3d", name="countries_3d"),
            Field("country"),
        ],
        ttl="1d",
    )
    ads = FeatureView(
        "ad_stats", [AD], source, [Aggregate("amount", "max", "3d", name="max_3d"), Field("country")]
    )
    pairs = FeatureView("user_ad", [USER, AD], source, [Aggregate("clicked", "count", "3d", name="shown_3d")])
    service = FeatureService("ranker", ["user_stats:ctr_3d", "ad_stats:max_3d", "user_ad:shown_3d"])
    return [USER, AD, users, ads, pairs, service]


FEATURES = [
    "user_stats:clicks_1h",
    "user_stats:amount_3d",
    "user_stats:ctr_3d",
    "user_stats:countries_3d",
    "user_stats:country",
    "ad_stats:max_3d",
    "ad_stats:country",
    "user_ad:shown_3d",
]
ENTITIES = {"user_id": [1, 2, 3, 4, 99, 1], "ad_id": [10, 11, 10, 12, 10, 12]}


@pytest.fixture
def redis_settings(tmp_path: Path, redis_url: str, redis_namespace: str) -> Settings:
    return Settings(
        home=tmp_path / "redis-ws", online_store="redis", redis_url=redis_url, redis_namespace=redis_namespace
    )


@pytest.fixture
def redis_fs(redis_settings: Settings) -> Iterator[FeatureStore]:
    with Workspace.init(settings=redis_settings) as ws:
        yield ws.features


def test_online_values_equal_the_sqlite_store(redis_fs: FeatureStore, workspace: Workspace) -> None:
    assert isinstance(redis_fs.online_store, RedisOnlineStore)
    results = []
    for fs in (workspace.features, redis_fs):
        fs.apply(definitions())
        assert fs.materialize(end=NOW) == {"ad_stats": 3, "user_ad": 6, "user_stats": 4}
        results.append((fs.online(FEATURES, ENTITIES), fs.online(fs.service("ranker"), ENTITIES)))
    (sqlite_all, sqlite_service), (redis_all, redis_service) = results
    assert redis_all.equals(sqlite_all), (redis_all.to_pydict(), sqlite_all.to_pydict())
    assert redis_service.equals(sqlite_service)
    # The comparison is not vacuous: values are present, missing (user 99) and expired (user 4).
    status = redis_all.to_pydict()["user_stats__country__status"]
    assert status == ["present", "present", "present", "expired", "missing", "present"]
    assert redis_all["user_stats__country"].to_pylist()[:3] == ["de", "jp", "us"]


def test_failed_materialize_leaves_previous_values_readable(
    redis_fs: FeatureStore,
    break_online_writes: Callable[[OnlineStore], type[Exception]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    redis_fs.apply(definitions())
    earlier = NOW - timedelta(hours=1)
    redis_fs.materialize(end=earlier)
    before = redis_fs.online(FEATURES, ENTITIES)
    assert break_online_writes(redis_fs.online_store) is Unavailable
    with pytest.raises(Unavailable, match="is unreachable"):
        redis_fs.materialize(end=NOW)
    assert redis_fs.online(FEATURES, ENTITIES).equals(before)
    monkeypatch.undo()
    redis_fs.materialize(end=NOW)  # what the failed run would have changed
    assert not redis_fs.online(FEATURES, ENTITIES).equals(before)


# -- the default namespace: the workspace id ----------------------------------------------------


@pytest.fixture
def default_namespace_settings(tmp_path: Path, redis_url: str) -> Iterator[Callable[[str], Settings]]:
    """Settings for Redis-backed workspaces without a namespace; their keys are deleted afterwards."""
    import redis

    homes: list[Path] = []

    def make(name: str) -> Settings:
        homes.append(tmp_path / name)
        return Settings(home=tmp_path / name, online_store="redis", redis_url=redis_url)

    yield make
    with redis.Redis.from_url(redis_url) as client:
        for home in homes:
            marker = home / "workspace.json"
            if marker.exists():
                prefix = f"openlearner:{json.loads(marker.read_text())['id']}:"
                for key in list(client.scan_iter(match=prefix + "*", count=1_000)):
                    client.delete(key)


def test_workspaces_sharing_a_server_keep_apart(
    default_namespace_settings: Callable[[str], Settings],
) -> None:
    with (
        Workspace.init(settings=default_namespace_settings("a")) as a,
        Workspace.init(settings=default_namespace_settings("b")) as b,
    ):
        assert a.id != b.id
        assert isinstance(a.features.online_store, RedisOnlineStore)
        assert a.features.online_store.namespace == f"openlearner:{a.id}"
        a.features.apply(definitions())
        b.features.apply(definitions())
        a.features.materialize(end=NOW)
        status = b.features.online(["user_stats:country"], {"user_id": [1]})["user_stats__country__status"]
        assert status.to_pylist() == ["missing"]
        assert a.features.online(["user_stats:country"], {"user_id": [1]})[
            "user_stats__country"
        ].to_pylist() == ["de"]


def test_the_workspace_id_is_kept_and_added_to_older_workspaces(
    default_namespace_settings: Callable[[str], Settings],
) -> None:
    settings = default_namespace_settings("ws")
    with Workspace.init(settings=settings) as ws:
        first = ws.id
    marker = settings.home / "workspace.json"
    meta = json.loads(marker.read_text())
    assert meta["id"] == first and len(first) == 32
    assert {"created_at", "created_by"} <= meta.keys()
    with Workspace.open(settings=settings, create=False) as again:
        assert again.id == first
    # A workspace.json written before ids existed gains one, once, and keeps what it had.
    del meta["id"]
    marker.write_text(json.dumps(meta))
    with Workspace.open(settings=settings, create=False) as upgraded:
        added = upgraded.id
        assert added != first and json.loads(marker.read_text()) == {**meta, "id": added}
    with Workspace.open(settings=settings, create=False) as later:
        assert later.id == added
    assert sorted(p.name for p in settings.home.iterdir() if "workspace" in p.name) == ["workspace.json"]
