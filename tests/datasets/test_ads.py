"""The ads click-log simulator: schema, determinism, base rates and the planted (drifting) signal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from openlearner.datasets import simulate_ads
from openlearner.errors import Invalid

US_PER_DAY = 86_400_000_000
DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)

EXPECTED_SCHEMA = pa.schema(
    [
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("user_id", pa.int64()),
        ("ad_id", pa.int64()),
        ("hour", pa.int64()),
        ("device", pa.int64()),
        ("position", pa.int64()),
        ("clicked", pa.int64()),
    ]
)


@pytest.fixture(scope="module")
def small() -> pa.Table:
    return simulate_ads(days=3, impressions_per_day=20_000, seed=0)


@pytest.fixture(scope="module")
def large() -> pa.Table:
    # Enough impressions per ad and per user for stable per-entity CTRs (~0.3 s).
    return simulate_ads(days=7, impressions_per_day=150_000, seed=0, num_users=2_000, num_ads=60)


def _micros(table: pa.Table) -> npt.NDArray[np.int64]:
    return table["event_time"].combine_chunks().cast(pa.int64()).to_numpy()


def _day(table: pa.Table, start: datetime = DEFAULT_START) -> npt.NDArray[np.int64]:
    start_us = (start - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return (_micros(table) - start_us) // US_PER_DAY


def _col(table: pa.Table, name: str) -> npt.NDArray[np.int64]:
    return table[name].to_numpy()


def _per_entity_ctr(
    ids: npt.NDArray[np.int64], clicked: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_], n: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    impressions = np.bincount(ids[mask], minlength=n).astype(np.float64)
    clicks = np.bincount(ids[mask], weights=clicked[mask], minlength=n)
    return impressions, np.divide(clicks, impressions, out=np.zeros(n), where=impressions > 0)


def test_schema_and_dtypes_exactly(small: pa.Table) -> None:
    assert small.schema.equals(EXPECTED_SCHEMA)
    assert small.column_names == ["event_time", "user_id", "ad_id", "hour", "device", "position", "clicked"]
    assert small["event_time"].type.tz == "UTC"
    assert small.num_rows == 3 * 20_000


def test_sorted_by_event_time(small: pa.Table) -> None:
    micros = _micros(small)
    assert np.all(np.diff(micros) >= 0)


def test_value_ranges(small: pa.Table) -> None:
    assert set(np.unique(_col(small, "clicked")).tolist()) == {0, 1}
    assert set(np.unique(_col(small, "device")).tolist()) == {0, 1, 2}
    assert set(np.unique(_col(small, "position")).tolist()) == {1, 2, 3, 4}
    assert _col(small, "user_id").min() >= 0
    assert _col(small, "ad_id").min() >= 0
    assert all(column.null_count == 0 for column in small.columns)
    # Default sizes: max(50, 20_000 // 20) users and max(20, 20_000 // 400) active ads.
    assert _col(small, "user_id").max() < 1_000
    assert np.unique(_col(small, "ad_id")[_day(small) == 0]).size <= 50


def test_hour_is_the_utc_hour_of_event_time(small: pa.Table) -> None:
    expected = pc.hour(small["event_time"]).to_numpy().astype(np.int64)
    np.testing.assert_array_equal(_col(small, "hour"), expected)
    assert set(np.unique(expected).tolist()) == set(range(24))


def test_days_cover_the_expected_range(small: pa.Table) -> None:
    day = _day(small)
    assert day.min() == 0 and day.max() == 2
    np.testing.assert_array_equal(np.bincount(day), [20_000, 20_000, 20_000])
    first, last = pc.min(small["event_time"]).as_py(), pc.max(small["event_time"]).as_py()
    assert DEFAULT_START <= first < DEFAULT_START + timedelta(hours=1)
    assert DEFAULT_START + timedelta(days=3) - timedelta(hours=1) < last < DEFAULT_START + timedelta(days=3)


def test_diurnal_traffic(small: pa.Table) -> None:
    per_hour = np.bincount(_col(small, "hour"), minlength=24)
    # Busiest in the evening (UTC), quietest in the morning.
    assert per_hour[17:22].mean() > 2 * per_hour[5:10].mean()


def test_start_naive_is_utc_and_aware_is_converted() -> None:
    naive = simulate_ads(days=1, impressions_per_day=500, start=datetime(2025, 6, 1, 5, 30))
    aware = simulate_ads(
        days=1,
        impressions_per_day=500,
        start=datetime(2025, 6, 1, 7, 30, tzinfo=timezone(timedelta(hours=2))),
    )
    assert naive.equals(aware)
    start = datetime(2025, 6, 1, 5, 30, tzinfo=UTC)
    day = _day(naive, start)
    assert day.min() == 0 and day.max() == 0
    np.testing.assert_array_equal(_col(naive, "hour"), pc.hour(naive["event_time"]).to_numpy())


def test_rows_is_days_times_impressions() -> None:
    assert simulate_ads(days=2, impressions_per_day=123, seed=5).num_rows == 246
    assert simulate_ads(days=1, impressions_per_day=1, seed=5).num_rows == 1


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    a = simulate_ads(days=2, impressions_per_day=5_000, seed=7)
    b = simulate_ads(days=2, impressions_per_day=5_000, seed=7)
    c = simulate_ads(days=2, impressions_per_day=5_000, seed=8)
    assert a.equals(b)
    assert not a.equals(c)
    assert not np.array_equal(_col(a, "clicked"), _col(c, "clicked"))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_overall_ctr_is_about_three_percent(seed: int) -> None:
    table = simulate_ads(days=2, impressions_per_day=20_000, seed=seed)
    ctr = float(np.mean(_col(table, "clicked")))
    assert 0.02 <= ctr <= 0.05


def test_ctr_in_range_for_small_explicit_pools() -> None:
    table = simulate_ads(days=2, impressions_per_day=20_000, seed=1, num_users=3, num_ads=2)
    assert 0.02 <= float(np.mean(_col(table, "clicked"))) <= 0.05
    assert set(np.unique(_col(table, "user_id")).tolist()) <= {0, 1, 2}


def test_position_effect_is_monotone_decreasing(large: pa.Table) -> None:
    clicked, position = _col(large, "clicked"), _col(large, "position")
    ctr = [clicked[position == p].mean() for p in (1, 2, 3, 4)]
    assert ctr[0] > ctr[1] > ctr[2] > ctr[3]


def test_historical_user_ctr_predicts_today(large: pa.Table) -> None:
    day, users, clicked = _day(large), _col(large, "user_id"), _col(large, "clicked")
    n = int(users.max()) + 1
    past_imp, past_ctr = _per_entity_ctr(users, clicked, (day >= 1) & (day <= 5), n)
    today_imp, today_ctr = _per_entity_ctr(users, clicked, day == 6, n)
    keep = (past_imp >= 20) & (today_imp >= 20)
    assert keep.sum() > 500
    r = np.corrcoef(past_ctr[keep], today_ctr[keep])[0, 1]
    assert r > 0.5


def test_the_truth_drifts_recent_days_predict_better(large: pa.Table) -> None:
    day, ads, clicked = _day(large), _col(large, "ad_id"), _col(large, "clicked")
    n = int(ads.max()) + 1
    imp0, ctr0 = _per_entity_ctr(ads, clicked, day == 0, n)
    imp5, ctr5 = _per_entity_ctr(ads, clicked, day == 5, n)
    imp6, ctr6 = _per_entity_ctr(ads, clicked, day == 6, n)
    keep = (imp0 >= 200) & (imp5 >= 200) & (imp6 >= 200)
    assert keep.sum() >= 30
    r06 = np.corrcoef(ctr0[keep], ctr6[keep])[0, 1]
    r56 = np.corrcoef(ctr5[keep], ctr6[keep])[0, 1]
    assert 0 < r06 < r56
    # Ads are retired and new ones launched: day 6 serves ids that did not exist on day 0.
    assert np.setdiff1d(np.unique(ads[day == 6]), np.unique(ads[day == 0])).size > 0
    assert np.setdiff1d(np.unique(ads[day == 0]), np.unique(ads[day == 6])).size > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"days": 0},
        {"days": -1},
        {"days": 1.5},
        {"days": True},
        {"days": "7"},
        {"impressions_per_day": 0},
        {"impressions_per_day": 10.0},
        {"impressions_per_day": False},
        {"seed": 1.0},
        {"seed": "0"},
        {"seed": True},
        {"seed": -1},
        {"num_users": 0},
        {"num_users": 2.5},
        {"num_ads": 0},
        {"num_ads": True},
        {"start": "2026-01-01"},
        {"start": 0},
    ],
)
def test_bad_input_raises_invalid(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"days": 1, "impressions_per_day": 100, **kwargs}
    with pytest.raises(Invalid) as info:
        simulate_ads(**args)  # type: ignore[arg-type]
    name = next(iter(kwargs))
    assert name in str(info.value)
