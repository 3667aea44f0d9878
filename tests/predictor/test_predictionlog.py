"""The prediction log (sampled requests in Parquet, joinable later), strict mode and feature misses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from openlearner.demo import CONTEXT
from openlearner.errors import Invalid
from openlearner.predictor import DataPlane
from openlearner.predictor.predictionlog import PredictionLog, PredictionRecord
from openlearner.predictor.protocol import InferenceRequest, InferInput

KEYS = ["user_id", "ad_id"]
NEVER_SEEN = 10**12


def ads_request(
    rows: dict[str, list[int]], request_id: str | None = None, **parameters: Any
) -> InferenceRequest:
    tensors = [
        InferInput(n, "INT64", [len(rows[n])], np.asarray(rows[n], dtype=np.int64)) for n in [*KEYS, *CONTEXT]
    ]
    return InferenceRequest(tensors, id=request_id, parameters=parameters)


def read(folder: Path) -> pa.Table:
    return pads.dataset(folder, format="parquet").to_table()


def test_sampled_requests_land_in_parquet_with_keys_features_outputs_and_version(
    served: Any, tmp_path: Path
) -> None:
    log = PredictionLog(tmp_path / "predictions", sample_rate=1.0)
    plane = DataPlane(served.ws.registry, served.ws.features, prediction_log=log)
    first = served.requests.slice(0, 3).to_pydict()
    second = served.requests.slice(3, 2).to_pydict()
    answers = [
        plane.infer("ads_ctr", None, ads_request(first, "a")),
        plane.infer("ads_ctr", None, ads_request(second)),
    ]
    plane.close()
    files = list((tmp_path / "predictions" / "ads_ctr" / "version=1").iterdir())
    assert files and all(f.suffix == ".parquet" and not f.name.startswith(".") for f in files)  # no temp left
    table = read(tmp_path / "predictions").sort_by([("logged_at", "ascending"), ("row", "ascending")])
    assert table.num_rows == 5
    rows = table.to_pylist()
    assert [r["request_id"] for r in rows[:3]] == ["a"] * 3
    assert len({r["request_id"] for r in rows[3:]}) == 1 and rows[3]["request_id"] != "a"  # generated
    assert {(r["model"], r["version"], r["role"]) for r in rows} == {("ads_ctr", 1, "primary")}
    assert [r["inputs"]["user_id"] for r in rows] == first["user_id"] + second["user_id"]
    served_p = np.concatenate([next(o.data for o in a.outputs if o.name == "probability") for a in answers])
    np.testing.assert_allclose([r["outputs"]["probability"] for r in rows], served_p)
    # The logged features are the ones the model saw: equal to the training set's as of materialization.
    offline = served.offline_rows(served.requests.slice(0, 5))
    for column in served.columns:
        logged = np.array([r["features"][column] for r in rows], dtype=np.float64)
        expected = offline.column(column).cast(pa.float64()).to_numpy(zero_copy_only=False)
        np.testing.assert_allclose(logged, expected, rtol=1e-6, equal_nan=True)


def test_nothing_is_logged_at_rate_zero_and_the_rate_is_checked(served: Any, tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "predictions", sample_rate=0.0)
    plane = DataPlane(served.ws.registry, served.ws.features, prediction_log=log)
    plane.infer("ads_ctr", None, ads_request(served.requests.slice(0, 2).to_pydict()))
    plane.close()
    assert not (tmp_path / "predictions").exists()
    for rate in (-0.1, 1.5):
        with pytest.raises(Invalid, match="sample rate"):
            PredictionLog(tmp_path, sample_rate=rate)


def test_a_sample_rate_logs_about_that_share(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, sample_rate=0.25, seed=7)
    share = sum(log.sampled() for _ in range(4000)) / 4000
    assert 0.2 < share < 0.3
    log.close()


def test_records_of_one_version_with_different_outputs_share_a_file_schema(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, sample_rate=1.0)
    for i in range(3):
        log.append(
            PredictionRecord(
                f"r{i}", "m", 4, "primary", {"x": np.array([[1.0, 2.0]])}, {"y": np.array([0.5 + i])}
            )
        )
    written = log.flush()
    assert len(written) == 1
    assert read(tmp_path).column("outputs").to_pylist() == [{"y": 0.5}, {"y": 1.5}, {"y": 2.5}]
    assert read(tmp_path).column("inputs").to_pylist()[0] == {"x": [1.0, 2.0]}
    log.close()


def test_a_write_that_fails_leaves_no_half_written_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import pyarrow.parquet as pq

    def full_disk(table: pa.Table, where: Any, **kwargs: Any) -> None:
        where.write(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    log = PredictionLog(tmp_path, sample_rate=1.0)
    log.append(PredictionRecord("r", "m", 1, "primary", {"x": np.array([1.0])}, {"y": np.array([0.5])}))
    monkeypatch.setattr(pq, "write_table", full_disk)
    assert log.flush() == []
    assert "could not write 1 prediction log records" in caplog.text
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no .tmp left over
    log.close()


# -- strict mode and misses -------------------------------------------------------------------------
def test_strict_mode_refuses_rows_without_features_naming_them(served: Any) -> None:
    rows = served.requests.slice(0, 2).to_pydict()
    rows["user_id"][1] = NEVER_SEEN
    strict = DataPlane(served.ws.registry, served.ws.features, strict=True)
    with pytest.raises(
        Invalid, match=f"strict mode: row 1: user_stats has no values for user_id={NEVER_SEEN}"
    ):
        strict.infer("ads_ctr", None, ads_request(rows))
    known = served.requests.slice(0, 2).to_pydict()
    assert strict.infer("ads_ctr", None, ads_request(known)).outputs
    lenient = DataPlane(served.ws.registry, served.ws.features)
    assert lenient.infer("ads_ctr", None, ads_request(rows)).outputs  # defaults served
    with pytest.raises(Invalid, match="strict mode"):
        lenient.infer("ads_ctr", None, ads_request(rows, strict=True))  # a request may ask for it
    with pytest.raises(Invalid, match="'strict' must be true or false"):
        lenient.infer("ads_ctr", None, ads_request(known, strict="yes"))
    strict.close()
    lenient.close()


def test_feature_misses_are_counted_per_feature(served: Any) -> None:
    plane = DataPlane(served.ws.registry, served.ws.features)
    rows = served.requests.slice(0, 3).to_pydict()
    rows["user_id"] = [NEVER_SEEN, NEVER_SEEN + 1, rows["user_id"][2]]
    plane.infer("ads_ctr", None, ads_request(rows))
    text = plane.metrics.render().decode()
    known_ctr = served.offline_rows(served.requests.slice(2, 1)).column("user_stats__ctr_7d")[0].as_py()
    # Two unknown users miss every user feature; a known user's stored null (a mean over no
    # events in the window) is counted too, while its count is always stored.
    expected = {"user_stats:impressions_7d": 2.0, "user_stats:ctr_7d": 2.0 + (known_ctr is None)}
    for feature, count in expected.items():
        line = (
            f'openlearner_predictor_feature_misses_total{{feature="{feature}",model="ads_ctr",version="1"}}'
        )
        assert f"{line} {count}" in text
    plane.close()


def test_a_version_loaded_again_keeps_counting_its_misses_up() -> None:
    """Counters never go down: a version retired and loaded again adds its new join's counts to
    the old ones, and each series says since when it counts (``_created``)."""
    from openlearner.predictor.metrics import PredictorMetrics

    metrics = PredictorMetrics()
    metrics.watch_misses("m", "1", lambda: {"v:a": 3, "v:b": 1})
    metrics.watch_misses("m", "1", lambda: {"v:a": 2})  # the same version, loaded again
    metrics.watch_misses("m", "2", lambda: {})
    text = metrics.render().decode()
    assert 'openlearner_predictor_feature_misses_total{feature="v:a",model="m",version="1"} 5.0' in text
    assert 'openlearner_predictor_feature_misses_total{feature="v:b",model="m",version="1"} 1.0' in text
    assert 'openlearner_predictor_feature_misses_created{feature="v:a",model="m",version="1"}' in text
    assert 'version="2"' not in text  # no misses yet: no series
