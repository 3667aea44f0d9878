"""CNNClassifier and the IDX reader: real MNIST digits, image shapes, bad pixels."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from openlearner.errors import Invalid
from openlearner.models import CNNClassifier
from openlearner.models.cnn import read_idx
from openlearner.models.onnx import export, to_onnx

torch.set_num_threads(1)  # small networks: one thread beats several competing for busy cores


def test_read_idx_reads_mnist(shared_data: Callable[[str], Path]) -> None:
    images = read_idx(shared_data("images/t10k-images-idx3-ubyte.gz"))
    labels = read_idx(shared_data("images/t10k-labels-idx1-ubyte.gz"))
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert 0 < images.mean() < 255


def test_read_idx_round_trips_and_refuses_other_files(tmp_path: Path) -> None:
    values = np.arange(24, dtype=">i4").reshape(2, 3, 4)
    header = bytes([0, 0, 0x0C, 3]) + np.array([2, 3, 4], ">u4").tobytes()
    (tmp_path / "ok.idx").write_bytes(header + values.tobytes())
    with gzip.open(tmp_path / "ok.idx.gz", "wb") as handle:
        handle.write(header + values.tobytes())
    assert np.array_equal(read_idx(tmp_path / "ok.idx"), values)
    assert np.array_equal(read_idx(tmp_path / "ok.idx.gz"), values)
    (tmp_path / "short.idx").write_bytes(header + values.tobytes()[:-4])
    with pytest.raises(Invalid, match="header promises"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "text.idx").write_bytes(b"hello world")
    with pytest.raises(Invalid, match="not an IDX file"):
        read_idx(tmp_path / "text.idx")
    with pytest.raises(Invalid, match="cannot read"):
        read_idx(tmp_path / "absent.idx")


def test_learns_real_digits_and_exports_with_parity(shared_data: Callable[[str], Path]) -> None:
    images = read_idx(shared_data("images/t10k-images-idx3-ubyte.gz"))[:1500]
    labels = read_idx(shared_data("images/t10k-labels-idx1-ubyte.gz"))[:1500]
    model = CNNClassifier(channels=(8,), hidden_size=32, epochs=6, learning_rate=3e-3, seed=0).fit(
        images[:1200], labels[:1200]
    )
    accuracy = float(np.mean(model.predict(images[1200:]) == labels[1200:]))
    assert accuracy > 0.8, accuracy  # ten classes: chance is about 0.1
    graph = to_onnx(model, images[1200:])
    shape = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert graph.graph.input[0].name == "input" and shape == ["batch", 1, 28, 28]
    _, report = export(model, images[1200:])
    assert report.passed and report.class_agreement == 1.0


def test_images_of_the_wrong_shape_or_with_bad_pixels_are_refused() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((40, 3, 6, 6)).astype(np.float32)
    y = rng.integers(0, 2, 40)
    model = CNNClassifier(channels=(2,), hidden_size=4, epochs=1).fit(images, y)
    assert model.image_shape_ == (3, 6, 6)
    with pytest.raises(Invalid, match=r"\[3, 6, 6\]"):
        model.predict(images[:, :1])
    with pytest.raises(Invalid, match=r"\[3, 6, 6\]"):
        model.predict(rng.random((2, 3, 7, 6)))
    with pytest.raises(Invalid, match="shape"):
        model.predict(rng.random((2, 6)))
    bad = images.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(Invalid, match="NaN"):
        model.predict(bad)
    with pytest.raises(Invalid, match="numeric"):
        model.predict(np.array([["a"]]))
    with pytest.raises(Invalid, match="no images"):
        CNNClassifier().fit(images[:0], y[:0])
