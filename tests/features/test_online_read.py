"""``FeatureStore.online`` over both online stores: the table it returns does not depend on how
the entity keys are given (plain lists, an Arrow table, a DataFrame), value columns keep their
declared types, and values of another type or keys that fit no type are handled, not lost."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from openlearner import Settings, Workspace
from openlearner.errors import Invalid
from openlearner.features import Entity, FeatureStore, FeatureView, Field, Source
from openlearner.features.online import reader
from openlearner.features.online.base import EVENT_TIME

NOW = datetime.now(UTC).replace(microsecond=0)
USER = Entity("user", ["user_id"])
COUNTRY = Entity("country", ["country"])
REFS = ["profile:score", "profile:visits", "profile:city", "profile:premium", "by_country:score"]


def events() -> pa.Table:
    """Users 1-3 recently, user 4 only long ago (expired under the 2-day TTL); cities by country."""
    rows = [
        (1, -3_600, 0.5, 3, "Paris", True, "fr"),
        (1, -60, 0.75, 4, "Lyon", False, "fr"),
        (2, -7_200, None, 1, "Kyoto", None, "jp"),
        (3, -30, 2.0, None, None, True, "de"),
        (4, -5 * 86_400, 9.5, 9, "Rio", False, "br"),
    ]
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "ts": pa.array([NOW + timedelta(seconds=r[1]) for r in rows], pa.timestamp("us", tz="UTC")),
            "score": pa.array([r[2] for r in rows], pa.float64()),
            "visits": pa.array([r[3] for r in rows], pa.int64()),
            "city": pa.array([r[4] for r in rows], pa.string()),
            "premium": pa.array([r[5] for r in rows], pa.bool_()),
            "country": pa.array([r[6] for r in rows], pa.string()),
        }
    )


def definitions() -> list[Any]:
    source = Source.table(events(), timestamp="ts", name="events")
    fields = [Field("score"), Field("visits"), Field("city"), Field("premium")]
    return [
        USER,
        COUNTRY,
        FeatureView("profile", [USER], source, fields, ttl="2d"),
        FeatureView("by_country", [COUNTRY], source, [Field("score")]),
    ]


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FeatureStore]:
    """A materialized feature store over each online store."""
    settings = Settings(home=tmp_path / "ws")
    if request.param == "redis":
        settings = Settings(
            home=tmp_path / "ws",
            online_store="redis",
            redis_url=request.getfixturevalue("redis_url"),
            redis_namespace=request.getfixturevalue("redis_namespace"),
        )
    with Workspace.init(settings=settings) as ws:
        ws.features.apply(definitions())
        ws.features.materialize(end=NOW)
        yield ws.features


ENTITIES = {"user_id": [2, 1, 99, 4, 1, 3], "country": ["jp", "fr", "xx", "br", "fr", "de"]}


def test_lists_tables_and_frames_give_the_same_table(fs: FeatureStore) -> None:
    plain = fs.online(REFS, ENTITIES)
    assert fs.online(REFS, pa.table(ENTITIES)).equals(plain)
    framed = fs.online(REFS, pd.DataFrame(ENTITIES))  # entity columns as pandas made them (large_string)
    assert framed.to_pydict() == plain.to_pydict()
    assert framed.drop_columns(["country"]).equals(plain.drop_columns(["country"]))
    assert fs.online(REFS, {k: pa.array(v) for k, v in ENTITIES.items()}).equals(plain)
    got = plain.to_pydict()
    assert got["profile__score"] == [None, 0.75, None, None, 0.75, 2.0]
    assert got["profile__score__status"] == ["present", "present", "missing", "expired", "present", "present"]
    assert got["profile__city"] == ["Kyoto", "Lyon", None, None, "Lyon", None]
    assert got["profile__premium"] == [None, False, None, None, False, True]
    assert got["profile__visits__status"] == got["profile__score__status"]  # a null value is present
    assert got["by_country__score"] == [None, 0.75, None, 9.5, 0.75, 2.0]  # no TTL: still present
    assert got["by_country__score__status"] == [
        "present",
        "present",
        "missing",
        "present",
        "present",
        "present",
    ]
    assert got["profile__event_time"] == [
        NOW - timedelta(seconds=7_200),
        NOW - timedelta(seconds=60),
        None,
        NOW - timedelta(days=5),
        NOW - timedelta(seconds=60),
        NOW - timedelta(seconds=30),
    ]


def test_columns_keep_their_declared_types_when_no_value_is_present(fs: FeatureStore) -> None:
    out = fs.online(REFS, {"user_id": [99, 98], "country": ["xx", "yy"]})
    types = {name: out.schema.field(name).type for name in out.column_names}
    assert types == {
        "user_id": pa.int64(),
        "country": pa.string(),
        "profile__event_time": pa.timestamp("us", tz="UTC"),
        "profile__score": pa.float64(),
        "profile__score__status": pa.string(),
        "profile__visits": pa.int64(),
        "profile__visits__status": pa.string(),
        "profile__city": pa.string(),
        "profile__city__status": pa.string(),
        "profile__premium": pa.bool_(),
        "profile__premium__status": pa.string(),
        "by_country__event_time": pa.timestamp("us", tz="UTC"),
        "by_country__score": pa.float64(),
        "by_country__score__status": pa.string(),
    }
    assert set(out["profile__score__status"].to_pylist()) == {"missing"}
    empty = fs.online(REFS, {"user_id": [], "country": []})
    assert empty.num_rows == 0 and empty.column_names == out.column_names


def test_a_value_of_another_type_is_served_as_it_is(fs: FeatureStore) -> None:
    # Rows written by an older definition (or by hand) whose values do not fit today's types.
    stored = pa.table(
        {
            "user_id": [5, 6],
            EVENT_TIME: pa.array([NOW, NOW], pa.timestamp("us", tz="UTC")),
            "score": [0.5, 0.25],
            "visits": ["seven", "eight"],
            "city": ["Oslo", "Bern"],
            "premium": [True, False],
        }
    )
    fs.online_store.write("profile", ["user_id"], stored)
    out = fs.online(REFS[:4], {"user_id": [5, 99, 6]})
    assert out["profile__visits"].type == pa.string()
    assert out["profile__visits"].to_pylist() == ["seven", None, "eight"]
    assert out["profile__visits__status"].to_pylist() == ["present", "missing", "present"]
    assert out["profile__score"].to_pylist() == [0.5, None, 0.25]
    assert out["profile__event_time"].to_pylist() == [NOW, None, NOW]
    assert out["user_id"].to_pylist() == [5, 99, 6]


def test_a_feature_missing_from_some_rows_is_missing_there(fs: FeatureStore) -> None:
    fs.online_store.write(
        "profile",
        ["user_id"],
        pa.table({"user_id": [7], EVENT_TIME: pa.array([NOW], pa.timestamp("us", tz="UTC")), "score": [1.5]}),
    )
    out = fs.online(REFS[:2], {"user_id": [7, 1]}).to_pydict()
    assert out["profile__score"] == [1.5, 0.75]
    assert out["profile__score__status"] == ["present", "present"]
    assert out["profile__visits"] == [None, 4]
    assert out["profile__visits__status"] == ["missing", "present"]


def test_keys_that_fit_no_type_are_refused(fs: FeatureStore) -> None:
    with pytest.raises(Invalid, match="cannot build a table"):
        fs.online(REFS[:1], {"user_id": [2**64]})
    with pytest.raises(Invalid, match="cannot build a table"):
        fs.online(REFS[:1], {"user_id": [1, 2], "note": ["a"]})  # columns of unequal length
    with pytest.raises(Invalid, match="entity key 'user_id' is bool but view 'profile' stores it as BIGINT"):
        fs.online(REFS[:1], {"user_id": [True]})
    with pytest.raises(Invalid, match="entities lack join key\\(s\\) country needed by view 'by_country'"):
        fs.online(REFS, {"user_id": [1]})
    # A key of no value matches nothing, and stays null in the entity column.
    out = fs.online(REFS[:1], {"user_id": [None, 1]}).to_pydict()
    assert out["user_id"] == [None, 1] and out["profile__score__status"] == ["missing", "present"]


def test_extra_columns_ride_along_untouched(fs: FeatureStore) -> None:
    out = fs.online(REFS[:1], {"user_id": [1, 2], "request": ["a", "b"], "weight": [0.5, None]})
    assert out.column_names[:3] == ["user_id", "request", "weight"]
    assert out.to_pydict()["weight"] == [0.5, None]


@pytest.mark.parametrize(
    "entities",
    [
        {"user_id": [1], "country": ["fr"]},
        {"country": ["fr", "de", "fr"], "user_id": [1, 1, 1], "note": ["a", None, "c"]},
        {"user_id": pa.array([1, 1]), "country": ["fr", "fr"]},
    ],
)
def test_a_read_with_every_value_present_gives_the_same_table_on_its_short_path(
    fs: FeatureStore, entities: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads whose values are all present and typed are laid out straight from the plan; the
    table must be the one the general path builds."""
    built: list[Any] = []

    def spy(*args: Any) -> Any:
        built.append(typed_table(*args))
        return built[-1]

    typed_table = reader._typed_table
    monkeypatch.setattr(reader, "_typed_table", spy)
    short = fs.online(REFS, entities)
    assert len(built) == 1 and built[0] is not None  # the short path built it
    monkeypatch.setattr(reader, "_typed_table", lambda *args: None)  # the general path
    general = fs.online(REFS, entities)
    assert short.equals(general)
    assert short.schema.field("profile__event_time").type == pa.timestamp("us", tz="UTC")
    assert set(short["profile__score__status"].to_pylist()) == {"present"}


def test_the_short_path_leaves_values_of_another_type_or_lacking_a_feature_to_the_general_one(
    fs: FeatureStore,
) -> None:
    stored = pa.table(
        {
            "user_id": [5, 6, 7],
            EVENT_TIME: pa.array([NOW] * 3, pa.timestamp("us", tz="UTC")),
            "score": [0.5, 0.25, 1.5],
            "visits": ["seven", "eight", None],
            "city": ["Oslo", "Bern", "Rome"],
            "premium": [True, False, True],
        }
    )
    fs.online_store.write("profile", ["user_id"], stored.slice(0, 2))
    fs.online_store.write("profile", ["user_id"], stored.slice(2).drop_columns(["visits"]))
    out = fs.online(REFS[:4], {"user_id": [5, 6]})
    assert out["profile__visits"].type == pa.string()
    assert out["profile__visits"].to_pylist() == ["seven", "eight"]
    lacking = fs.online(REFS[:4], {"user_id": [7]}).to_pydict()
    assert lacking["profile__visits"] == [None] and lacking["profile__visits__status"] == ["missing"]
    assert lacking["profile__score"] == [1.5] and lacking["profile__score__status"] == ["present"]


NUMBERS = ["profile:score", "profile:visits"]  # a float and an int: the one-row layout's shape


def _numbers(user_ids: list[int], scores: list[Any], visits: list[Any]) -> pa.Table:
    return pa.table(
        {
            "user_id": user_ids,
            EVENT_TIME: pa.array(
                [NOW - timedelta(seconds=i) for i in range(len(user_ids))], pa.timestamp("us", tz="UTC")
            ),
            "score": scores,
            "visits": visits,
        }
    )


def _general(fs: FeatureStore, refs: list[str], entities: Any, monkeypatch: pytest.MonkeyPatch) -> pa.Table:
    """The table the general path builds for the same read (the one-row layout and short path off)."""
    with monkeypatch.context() as patch:
        patch.setattr(reader._OneRow, "table", lambda *args: None)
        patch.setattr(reader, "_typed_table", lambda *args: None)
        return fs.online(refs, entities)


def test_a_one_row_read_of_numbers_fills_its_layout_with_each_reads_own_values(
    fs: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One entity row whose keys and values are 8-byte numbers is laid out once as an Arrow
    IPC message; every later read of that shape fills it with its own values, and the table is
    the one the general path builds."""
    users = list(range(10, 16))
    fs.online_store.write(
        "profile", ["user_id"], _numbers(users, [0.5 * u for u in users], [u * 3 for u in users])
    )
    filled: list[pa.Table | None] = []
    fill = reader._OneRow.table

    def spy(self: Any, *args: Any) -> Any:
        filled.append(fill(self, *args))
        return filled[-1]

    monkeypatch.setattr(reader._OneRow, "table", spy)
    for user in users:
        out = fs.online(NUMBERS, {"user_id": [user]})
        assert out.to_pylist() == [
            {
                "user_id": user,
                "profile__event_time": NOW - timedelta(seconds=user - 10),
                "profile__score": 0.5 * user,
                "profile__score__status": "present",
                "profile__visits": user * 3,
                "profile__visits__status": "present",
            }
        ]
        general = _general(fs, NUMBERS, {"user_id": [user]}, monkeypatch)
        assert out.equals(general) and out.schema == general.schema
    assert len(filled) == len(users) - 1 and all(t is not None for t in filled)  # the first read laid it out
    assert fs._online_read(NUMBERS).one_row[("user_id",)] is not None
    for weight in (0.25, 0.5):  # an extra column of numbers rides along in the layout too
        entities = {"user_id": [12], "weight": [weight]}
        out = fs.online(NUMBERS, entities)
        assert out.equals(_general(fs, NUMBERS, entities, monkeypatch)) and out["weight"].to_pylist() == [
            weight
        ]
    assert filled[-1] is not None


@pytest.mark.parametrize(
    "score, visits, why",
    [
        (None, 7, "a null value"),
        (3, 7, "an int where a float is declared"),
        (1.5, True, "a boolean where an int is declared"),
        (1.5, 2**63, "an int out of the 64-bit range"),
    ],
)
def test_a_one_row_read_whose_numbers_do_not_fit_its_layout_takes_the_general_path(
    fs: FeatureStore, monkeypatch: pytest.MonkeyPatch, score: Any, visits: Any, why: str
) -> None:
    fs.online_store.write("profile", ["user_id"], _numbers([10], [0.5], [3]))
    fs.online(NUMBERS, {"user_id": [10]})  # lays the shape out
    assert fs._online_read(NUMBERS).one_row[("user_id",)] is not None
    doc = {"score": score, "visits": visits}
    stored = pa.table({"user_id": [11], EVENT_TIME: pa.array([NOW], pa.timestamp("us", tz="UTC"))})
    for name, value in doc.items():
        stored = stored.append_column(name, pa.array([value], pa.uint64() if value == 2**63 else None))
    fs.online_store.write("profile", ["user_id"], stored)
    filled: list[Any] = []
    fill = reader._OneRow.table
    monkeypatch.setattr(
        reader._OneRow, "table", lambda self, *args: filled.append(fill(self, *args)) or filled[-1]
    )
    out = fs.online(NUMBERS, {"user_id": [11]})
    assert filled == [None], why  # the layout declined
    assert out.to_pydict() == _general(fs, NUMBERS, {"user_id": [11]}, monkeypatch).to_pydict()
    assert out.to_pydict()["profile__visits"] == [visits], why
    still = fs.online(NUMBERS, {"user_id": [10]})  # the layout still serves its own shape
    assert still.to_pydict()["profile__score"] == [0.5]


def test_one_row_reads_of_other_shapes_are_not_laid_out(
    fs: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Strings and booleans vary in bytes, Arrow keys are no plain lists: the short path serves them."""
    fs.online_store.write("profile", ["user_id"], _numbers([10], [0.5], [3]))
    read_keys = {"user_id": pa.array([10])}
    assert fs.online(NUMBERS, read_keys).equals(_general(fs, NUMBERS, read_keys, monkeypatch))
    assert ("user_id",) not in fs._online_read(NUMBERS).one_row  # not learnt from Arrow keys
    fs.online(NUMBERS, {"user_id": [10]})
    assert fs._online_read(NUMBERS).one_row[("user_id",)] is not None
    for refs, entities in [
        (REFS[:4], {"user_id": [1]}),  # a string and a boolean value
        (["by_country:score"], {"country": ["fr"]}),  # a string key
        (NUMBERS, {"user_id": [10], "note": ["a"]}),  # an extra column of strings
        (NUMBERS, {"user_id": [10], "at": [NOW]}),  # an extra column of times
    ]:
        out = fs.online(refs, entities)
        assert out.equals(_general(fs, refs, entities, monkeypatch))
        assert fs._online_read(refs).one_row.get(tuple(entities)) is None


def test_unchanged_definitions_keep_their_read_plan_and_its_layouts(
    fs: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openlearner.features import store

    monkeypatch.setattr(store, "PLAN_REFRESH_SECONDS", 0.0)  # look the definitions up on every read
    fs.online(NUMBERS, {"user_id": [1]})
    first = fs._online_read(NUMBERS)
    assert fs._online_read(NUMBERS) is first and first.one_row
    source = Source.table(events(), timestamp="ts", name="events")
    fields = [Field("score"), Field("visits"), Field("city"), Field("premium")]
    fs.apply([FeatureView("profile", [USER], source, fields, ttl="3d")])  # a new TTL
    changed = fs._online_read(NUMBERS)
    assert changed is not first and changed.plans[0].ttl_us == 3 * 86_400_000_000


def test_an_extra_column_of_times_then_of_ints_keeps_its_own_type(
    fs: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A column laid out as times must not take ints as times: such a shape is not laid out."""
    fs.online_store.write("profile", ["user_id"], _numbers([10], [0.5], [3]))
    first = fs.online(NUMBERS, {"user_id": [10], "at": [NOW]})
    assert first["at"].type == pa.timestamp("us", tz="UTC")
    later = fs.online(NUMBERS, {"user_id": [10], "at": [1_700_000_000]})
    assert later["at"].type == pa.int64() and later["at"].to_pylist() == [1_700_000_000]
    assert later.equals(_general(fs, NUMBERS, {"user_id": [10], "at": [1_700_000_000]}, monkeypatch))
