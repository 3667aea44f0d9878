"""Click counts over real TalkingData clicks (CSV with text timestamps) against a brute-force count."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from openlearner import Workspace
from openlearner.features import Aggregate, Entity, FeatureView, Source

WINDOWS = {"1h": timedelta(hours=1), "1d": timedelta(days=1)}


def _micros(times: list[datetime]) -> npt.NDArray[np.int64]:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return np.array([(t - epoch) // timedelta(microseconds=1) for t in times], dtype=np.int64)


@pytest.fixture(scope="module")
def clicks(talkingdata_sample: Path) -> pa.Table:
    # Read the text timestamps ourselves (as UTC), independently of DuckDB's CSV sniffing.
    options = pacsv.ConvertOptions(
        column_types={"click_time": pa.string()}, include_columns=["ip", "app", "click_time"]
    )
    table = pacsv.read_csv(talkingdata_sample, convert_options=options)
    times = [
        datetime.strptime(t, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) for t in table["click_time"].to_pylist()
    ]
    return table.append_column("us", pa.array(_micros(times)))


def test_ip_and_app_click_counts_match_a_brute_force_count(
    workspace: Workspace, talkingdata_sample: Path, clicks: pa.Table
) -> None:
    source = Source.csv(talkingdata_sample, timestamp="click_time", name="talkingdata")
    features = [Aggregate("channel", "count", w, name=f"clicks_{w}") for w in WINDOWS]
    ip_view = FeatureView("ip_clicks", [Entity("ip", ["ip"])], source, features)
    app_view = FeatureView("app_clicks", [Entity("app", ["app"])], source, features)
    pair_view = FeatureView("ip_app_clicks", [Entity("ip", ["ip"]), Entity("app", ["app"])], source, features)
    store = workspace.features
    store.apply([source, ip_view, app_view, pair_view])

    # Busy ips and apps, at times of real clicks (ties at the row time) and at random instants.
    rng = random.Random(0)
    ips = np.asarray(clicks["ip"])
    apps = np.asarray(clicks["app"])
    us = np.asarray(clicks["us"])
    busy = [5348, 5314, 73487]
    rows: list[tuple[int, int, datetime]] = []
    for ip in busy:
        own = np.flatnonzero(ips == ip)
        for i in rng.sample(list(own), 4):
            rows.append(
                (ip, int(apps[i]), datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us[i])))
            )
        start = datetime(2017, 11, 6, 16, tzinfo=UTC)
        rows.append((ip, 3, start + timedelta(seconds=rng.randrange(3 * 86_400))))
    rows.append((1, 999_999, datetime(2017, 11, 8, tzinfo=UTC)))  # no such ip or app: counts are 0
    spine = {
        "ip": [r[0] for r in rows],
        "app": [r[1] for r in rows],
        "click_time": [r[2].replace(tzinfo=None) for r in rows],  # naive: UTC, like the file
    }
    refs = [f"{view}:clicks_{w}" for view in ("ip_clicks", "app_clicks", "ip_app_clicks") for w in WINDOWS]
    out = store.training_set(spine, refs, timestamp="click_time").to_pydict()

    for row, (ip, app, t) in enumerate(rows):
        t_us = _micros([t])[0]
        for window, delta in WINDOWS.items():
            inside = (us < t_us) & (us > t_us - delta // timedelta(microseconds=1))
            expected = {
                "ip_clicks": int(np.sum(inside & (ips == ip))),
                "app_clicks": int(np.sum(inside & (apps == app))),
                "ip_app_clicks": int(np.sum(inside & (ips == ip) & (apps == app))),
            }
            for view, want in expected.items():
                assert out[f"{view}__clicks_{window}"][row] == want, (view, window, ip, app, t)
    assert out["ip_clicks__clicks_1d"][-1] == 0
    assert max(out["ip_clicks__clicks_1d"]) > 50  # the busy ips make the check meaningful
