"""The hot-path feature join, over a fake online store whose rows and times the test sets."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from openlearner import FeatureView, Source
from openlearner.demo import ads_definitions
from openlearner.errors import Corrupt, Invalid
from openlearner.features.online.base import OnlineStore, encode_key
from openlearner.predictor.features import FeatureJoin
from openlearner.registry.signature import ServingSpec, Signature, TensorSpec

DAY_US = 86_400 * 1_000_000


class FakeOnlineStore(OnlineStore):
    """Rows by view and encoded key; remembers every read."""

    def __init__(self, rows: dict[str, dict[str, tuple[int, dict[str, Any]]]]) -> None:
        self.rows = rows
        self.reads: list[tuple[str, list[str]]] = []

    def write(self, view: str, join_keys: Sequence[str], rows: pa.Table) -> int:
        raise NotImplementedError

    def read_keys(self, view: str, keys: Sequence[str]) -> dict[str, tuple[int, dict[str, Any]]]:
        self.reads.append((view, list(keys)))
        stored = self.rows.get(view, {})
        return {k: stored[k] for k in keys if k in stored}

    def delete(self, view: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True, params=[False, True], ids=["fresh-documents", "kept-documents"])
def keeps_documents(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Every test twice: over a store that says it answers unchanged documents as the same
    objects (the join then remembers each document's row) and over one that does not."""
    monkeypatch.setattr(FakeOnlineStore, "keeps_documents", request.param)
    return bool(request.param)


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture
def views() -> dict[str, FeatureView]:
    _, _, user_stats, ad_stats, _ = ads_definitions(
        Source.parquet("/nowhere/*.parquet", timestamp="event_time")
    )
    return {"user_stats": user_stats, "ad_stats": ad_stats}


def signature(columns: list[str]) -> Signature:
    """The ads model's signature with its columns in the given order."""
    int64 = [TensorSpec(n, "INT64", [-1]) for n in ["user_id", "ad_id", "hour", "device", "position"]]
    features = [
        "user_stats:ctr_1d",
        "user_stats:ctr_7d",
        "user_stats:impressions_7d",
        "ad_stats:ctr_7d",
        "ad_stats:impressions_7d",
    ]
    return Signature(
        inputs=[TensorSpec("input", "FP32", [-1, len(columns)])],
        outputs=[TensorSpec("label", "INT64", [-1]), TensorSpec("probability", "FP32", [-1])],
        columns=columns,
        serving=ServingSpec("ads_ctr_v1", int64[:2], features, int64[2:]),
    )


COLUMNS = [
    "user_stats__ctr_1d",
    "user_stats__ctr_7d",
    "user_stats__impressions_7d",
    "ad_stats__ctr_7d",
    "ad_stats__impressions_7d",
    "hour",
    "device",
    "position",
]


def tensors(users: list[int], ads: list[int]) -> dict[str, np.ndarray]:
    n = len(users)
    return {
        "user_id": np.array(users, np.int64),
        "ad_id": np.array(ads, np.int64),
        "hour": np.arange(n, dtype=np.int64) + 10,
        "device": np.full(n, 2, np.int64),
        "position": np.full(n, 3, np.int64),
    }


def user(ctr_1d: float | None, ctr_7d: float | None, impressions: int | None) -> dict[str, Any]:
    return {"ctr_1d": ctr_1d, "ctr_7d": ctr_7d, "impressions_7d": impressions}


def test_values_and_request_inputs_land_in_their_columns(views: dict[str, FeatureView]) -> None:
    online = FakeOnlineStore(
        {
            "user_stats": {encode_key([7]): (now_us(), user(0.5, 0.25, 12))},
            "ad_stats": {encode_key([3]): (now_us(), {"ctr_7d": 0.125, "impressions_7d": 400})},
        }
    )
    matrix = FeatureJoin(signature(COLUMNS), online, views).assemble(tensors([7], [3]), 1)
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, [[0.5, 0.25, 12, 0.125, 400, 10, 2, 3]])


def test_columns_follow_the_signature_order_not_the_service_order(views: dict[str, FeatureView]) -> None:
    shuffled = ["position", "ad_stats__impressions_7d", "hour", *COLUMNS[:3], "device", "ad_stats__ctr_7d"]
    online = FakeOnlineStore(
        {
            "user_stats": {encode_key([7]): (now_us(), user(0.5, 0.25, 12))},
            "ad_stats": {encode_key([3]): (now_us(), {"ctr_7d": 0.125, "impressions_7d": 400})},
        }
    )
    matrix = FeatureJoin(signature(shuffled), online, views).assemble(tensors([7], [3]), 1)
    np.testing.assert_array_equal(matrix, [[3, 400, 10, 0.5, 0.25, 12, 2, 0.125]])


def test_one_read_per_view_for_the_whole_batch(views: dict[str, FeatureView]) -> None:
    online = FakeOnlineStore({})
    FeatureJoin(signature(COLUMNS), online, views).assemble(tensors([1, 2, 1], [5, 6, 7]), 3)
    assert sorted(online.reads) == [
        ("ad_stats", [encode_key([5]), encode_key([6]), encode_key([7])]),
        ("user_stats", [encode_key([1]), encode_key([2]), encode_key([1])]),
    ]


def test_a_missing_entity_gets_what_training_gives_it_and_is_counted(views: dict[str, FeatureView]) -> None:
    """Counts over no events are 0 in training sets; every other aggregate is null (NaN)."""
    online = FakeOnlineStore(
        {"ad_stats": {encode_key([3]): (now_us(), {"ctr_7d": 0.125, "impressions_7d": 400})}}
    )
    join = FeatureJoin(signature(COLUMNS), online, views)
    matrix = join.assemble(tensors([7, 8], [3, 4]), 2)
    assert np.isnan(matrix[:, :2]).all()  # means: missing
    assert matrix[:, 2].tolist() == [0, 0]  # count: zero
    assert matrix[0, 3:5].tolist() == [0.125, 400]
    assert np.isnan(matrix[1, 3])
    assert matrix[1, 4] == 0
    assert matrix[:, 5].tolist() == [10, 11]
    assert join.misses == {
        "user_stats:ctr_1d": 2,
        "user_stats:ctr_7d": 2,
        "user_stats:impressions_7d": 2,
        "ad_stats:ctr_7d": 1,
        "ad_stats:impressions_7d": 1,
    }


def test_each_batch_reports_its_own_misses_and_the_join_adds_them_up(views: dict[str, FeatureView]) -> None:
    """A batch's result names its own misses; ``join.misses`` is the running total (the metric)."""
    online = FakeOnlineStore({"user_stats": {encode_key([1]): (now_us(), user(None, 0.25, 12))}})
    join = FeatureJoin(signature(COLUMNS), online, views)
    first = join.join(tensors([1], [0]), 1)  # a stored null; the ad has no values at all
    second = join.join(tensors([2, 1], [0, 0]), 2)  # an unknown user, then the same as before
    assert first.misses == {"user_stats:ctr_1d": 1, "ad_stats:ctr_7d": 1, "ad_stats:impressions_7d": 1}
    assert second.misses == {
        "user_stats:ctr_1d": 2,
        "user_stats:ctr_7d": 1,
        "user_stats:impressions_7d": 1,
        "ad_stats:ctr_7d": 2,
        "ad_stats:impressions_7d": 2,
    }
    assert join.misses == first.misses + second.misses
    assert sorted(second.missing) == [0, 1]  # row 0: no user values; both: no ad values


def test_values_past_the_view_s_ttl_are_treated_as_missing(views: dict[str, FeatureView]) -> None:
    assert views["user_stats"].ttl == "30d"
    online = FakeOnlineStore(
        {
            "user_stats": {
                encode_key([1]): (now_us() - 31 * DAY_US, user(0.5, 0.25, 12)),  # expired
                encode_key([2]): (now_us() - 29 * DAY_US, user(0.5, 0.25, 12)),  # still fresh
            }
        }
    )
    join = FeatureJoin(signature(COLUMNS), online, views)
    matrix = join.assemble(tensors([1, 2], [0, 0]), 2)
    assert np.isnan(matrix[0, :2]).all()
    assert matrix[0, 2] == 0
    assert matrix[1, :3].tolist() == [0.5, 0.25, 12]
    assert join.misses["user_stats:ctr_7d"] == 1


def test_a_stored_null_stays_null(views: dict[str, FeatureView]) -> None:
    """A mean over an empty 1-day window is null offline; the online null must not become 0."""
    online = FakeOnlineStore({"user_stats": {encode_key([1]): (now_us(), user(None, 0.25, 12))}})
    join = FeatureJoin(signature(COLUMNS), online, views)
    matrix = join.assemble(tensors([1], [0]), 1)
    assert np.isnan(matrix[0, 0])
    assert matrix[0, 1:3].tolist() == [0.25, 12]
    assert join.misses["user_stats:ctr_1d"] == 1


def test_a_feature_missing_from_stored_values_is_null_and_counted(views: dict[str, FeatureView]) -> None:
    """Values written before a feature was added lack it: null, and a miss, next to a full row."""
    online = FakeOnlineStore(
        {
            "user_stats": {
                encode_key([1]): (now_us(), {"ctr_7d": 0.25, "impressions_7d": 12}),
                encode_key([2]): (now_us(), user(0.5, 0.25, 12)),
            }
        }
    )
    join = FeatureJoin(signature(COLUMNS), online, views)
    matrix = join.assemble(tensors([1, 2, 3], [0, 0, 0]), 3)
    assert np.isnan(matrix[0, 0]) and matrix[0, 1:3].tolist() == [0.25, 12]
    assert matrix[1, :3].tolist() == [0.5, 0.25, 12]
    assert join.misses["user_stats:ctr_1d"] == 2  # row 0 lacks it, row 2 has no values at all
    assert join.misses["user_stats:ctr_7d"] == 1 and join.misses["user_stats:impressions_7d"] == 1


def test_repeated_keys_in_a_batch_all_get_their_values(views: dict[str, FeatureView]) -> None:
    online = FakeOnlineStore({"user_stats": {encode_key([1]): (now_us(), user(0.5, 0.25, 12))}})
    matrix = FeatureJoin(signature(COLUMNS), online, views).assemble(tensors([1, 1, 1], [0, 0, 0]), 3)
    assert matrix[:, 1].tolist() == [0.25, 0.25, 0.25]


def test_a_raw_signature_has_no_join(views: dict[str, FeatureView]) -> None:
    raw = Signature([TensorSpec("input", "FP32", [-1, 8])], [], COLUMNS)
    with pytest.raises(Invalid, match="raw tensors"):
        FeatureJoin(raw, FakeOnlineStore({}), views)


def test_a_join_remembering_documents_answers_as_one_that_does_not(views: dict[str, FeatureView]) -> None:
    """Batch after batch, as stored values change (new documents), appear, expire and vanish."""
    rng = np.random.default_rng(7)
    rows: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {"user_stats": {}, "ad_stats": {}}
    remembering, fresh = FakeOnlineStore(rows), FakeOnlineStore(rows)
    remembering.keeps_documents, fresh.keeps_documents = True, False
    kept, plain = (
        FeatureJoin(signature(COLUMNS), remembering, views),
        FeatureJoin(signature(COLUMNS), fresh, views),
    )
    for _ in range(300):
        user_id, ad_id = (int(v) for v in rng.integers(0, 6, size=2))
        change = rng.integers(0, 5)
        if change == 0:
            ctr = None if rng.random() < 0.2 else float(rng.random())
            age = 31 * DAY_US if rng.random() < 0.2 else 0
            rows["user_stats"][encode_key([user_id])] = (now_us() - age, user(ctr, float(rng.random()), 3))
        elif change == 1:
            rows["ad_stats"][encode_key([ad_id])] = (now_us(), {"ctr_7d": float(rng.random())})  # lacks one
        elif change == 2:
            rows["user_stats"].pop(encode_key([user_id]), None)
        size = int(rng.integers(1, 5))
        batch = tensors(rng.integers(0, 6, size=size).tolist(), rng.integers(0, 6, size=size).tolist())
        a, b = kept.join(batch, size), plain.join(batch, size)
        np.testing.assert_array_equal(a.matrix, b.matrix)
        assert a.missing == b.missing and a.misses == b.misses
    assert kept.misses == plain.misses
    assert any(kept._remembered)  # the remembering join did remember


def test_a_stored_value_that_is_not_a_number_is_reported_as_corrupt(views: dict[str, FeatureView]) -> None:
    online = FakeOnlineStore({"user_stats": {encode_key([1]): (now_us(), user(0.5, [0.25], 12))}})  # type: ignore[arg-type]
    join = FeatureJoin(signature(COLUMNS), online, views)
    with pytest.raises(Corrupt, match=r"user_stats.*not one number per feature"):
        join.assemble(tensors([1], [0]), 1)
    online.rows["user_stats"][encode_key([1])] = (
        now_us(),
        {"ctr_1d": "high", "ctr_7d": 1, "impressions_7d": 1},
    )
    with pytest.raises(Corrupt, match=r"user_stats.*not one number per feature"):
        join.assemble(tensors([1], [0]), 1)
    one = Signature(
        inputs=[TensorSpec("input", "FP32", [-1, 4])],
        outputs=[],
        columns=["user_stats__ctr_7d", "hour", "device", "position"],
        serving=ServingSpec(
            "one",
            [TensorSpec("user_id", "INT64", [-1])],
            ["user_stats:ctr_7d"],
            [TensorSpec(n, "INT64", [-1]) for n in ["hour", "device", "position"]],
        ),
    )
    online.rows["user_stats"][encode_key([1])] = (now_us(), user(0.5, [0.25], 12))  # type: ignore[arg-type]
    with pytest.raises(Corrupt, match=r"user_stats.*not one number per feature"):
        FeatureJoin(one, online, views).assemble(tensors([1], [0]), 1)


def test_a_model_reading_one_view(views: dict[str, FeatureView]) -> None:
    columns = ["user_stats__ctr_7d", "hour", "device", "position"]
    int64 = [TensorSpec(n, "INT64", [-1]) for n in ["user_id", "hour", "device", "position"]]
    one_view = Signature(
        inputs=[TensorSpec("input", "FP32", [-1, len(columns)])],
        outputs=[TensorSpec("probability", "FP32", [-1])],
        columns=columns,
        serving=ServingSpec("users_only", int64[:1], ["user_stats:ctr_7d"], int64[1:]),
    )
    online = FakeOnlineStore({"user_stats": {encode_key([7]): (now_us(), user(0.5, 0.25, 12))}})
    join = FeatureJoin(one_view, online, views)
    both = {
        "user_id": np.array([7, 8], np.int64),
        "hour": np.array([1, 2]),
        "device": np.array([3, 3]),
        "position": np.array([4, 4]),
    }
    matrix = join.assemble(both, 2)
    np.testing.assert_array_equal(matrix[0], [0.25, 1, 3, 4])
    assert np.isnan(matrix[1, 0]) and matrix[1, 1:].tolist() == [2, 3, 4]
    assert join.misses == {"user_stats:ctr_7d": 1}


def test_a_row_alone_gets_the_matrix_it_gets_in_a_batch(views: dict[str, FeatureView]) -> None:
    """Request inputs of mixed types (a huge int next to a float) are each cast straight to
    float32, whether the row is joined alone (one step, with kept documents) or in a batch."""
    online = FakeOnlineStore(
        {
            "user_stats": {encode_key([7]): (now_us(), user(0.5, 0.25, 12))},
            "ad_stats": {encode_key([3]): (now_us(), {"ctr_7d": 0.125, "impressions_7d": 400})},
        }
    )
    join = FeatureJoin(signature(COLUMNS), online, views)
    big = 2**60 + 2**36 + 1  # rounds differently through float64 than straight to float32
    two = tensors([7, 7], [3, 3])
    two["hour"] = np.array([big, 1], np.int64)
    two["device"] = np.array([0.1, 0.2], np.float64)
    two["position"] = np.array([1, 2], np.uint64)
    one = {name: values[:1] for name, values in two.items()}
    alone, batched = join.join(one, 1), join.join(two, 2)
    np.testing.assert_array_equal(alone.matrix[0], batched.matrix[0])
    assert alone.matrix[0, 5] == np.array([big]).astype(np.float32)[0]  # not float32(float(big))
    assert alone.matrix[0, 6] == np.float32(0.1)
    assert alone.missing == {} and alone.misses == {}
