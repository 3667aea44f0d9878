"""A convolutional image classifier (Lumos-style image attributes), and an IDX image reader."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from openlearner.errors import Invalid
from openlearner.models.mlp import Standardize, check_dropout, check_sizes
from openlearner.models.nn import TorchClassifier

__all__ = ["CNNClassifier", "read_idx"]

_IDX_TYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> npt.NDArray[Any]:
    """An array from an IDX file (the MNIST format), gzip-compressed or not, with numpy only."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise Invalid(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise Invalid(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise Invalid(f"{path} holds {len(data)} bytes, but its header promises {expected}")
    return np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(shape).astype(dtype.newbyteorder("="))


class _CNNNetwork(nn.Module):
    def __init__(
        self, images: np.ndarray, channels: Sequence[int], hidden: int, dropout: float, n_classes: int
    ) -> None:
        super().__init__()
        self.standardize = Standardize(images.reshape(-1, 1))  # one mean and std over every pixel
        layers: list[nn.Module] = []
        depth, height, width = images.shape[1:]
        for out in channels:
            layers += [nn.Conv2d(depth, out, kernel_size=3, padding=1), nn.ReLU()]
            if height >= 2 and width >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            depth = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(depth * height * width, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(self.standardize(images)))
        return out


class CNNClassifier(TorchClassifier):
    """Images → 3×3 convolutions with max-pooling → a dense layer → class probabilities.

    ``X`` is a numpy array of images ``[n, height, width]`` (one channel) or ``[n, channels,
    height, width]``, any numeric type (uint8 pixels are fine: the pixel mean and spread
    learned in ``fit`` are part of the network). The exported graph takes ``input`` float32
    ``[batch, channels, height, width]``; images of another shape are refused.
    """

    def __init__(
        self,
        *,
        channels: Sequence[int] = (16, 32),
        hidden_size: int = 64,
        dropout: float = 0.25,
        epochs: int = 10,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        validation_fraction: float = 0.1,
        patience: int = 2,
        seed: int = 0,
        device: str = "auto",
        verbose: bool = False,
    ) -> None:
        self.channels = channels
        self.hidden_size = hidden_size
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.seed = seed
        self.device = device
        self.verbose = verbose

    def _validate(self) -> None:
        check_sizes("channels", self.channels)
        if not isinstance(self.hidden_size, int) or self.hidden_size < 1:
            raise Invalid(f"hidden_size must be a positive integer, not {self.hidden_size!r}")
        check_dropout(self.dropout)

    @staticmethod
    def _images(X: Any) -> npt.NDArray[np.float32]:
        try:
            images = np.asarray(X)
        except (TypeError, ValueError) as exc:
            raise Invalid(f"cannot read the images as an array: {exc}") from exc
        if images.dtype.kind not in "iufb":
            raise Invalid(f"images must be numeric pixel arrays, not {images.dtype}")
        if images.ndim == 3:
            images = images[:, None, :, :]
        if images.ndim != 4:
            raise Invalid(
                f"images must be [n, height, width] or [n, channels, height, width], not of shape {images.shape}"
            )
        images = images.astype(np.float32)
        if not np.isfinite(images).all():
            raise Invalid("images hold NaN or infinite pixel values; fix or drop those images")
        return images

    def _learn_inputs(self, X: Any) -> None:
        images = self._images(X)
        if images.shape[0] == 0:
            raise Invalid("there are no images to learn from; pass at least one image per class")
        self.image_shape_ = tuple(int(d) for d in images.shape[1:])

    def _feeds(self, X: Any) -> dict[str, np.ndarray]:
        images = self._images(X)
        if tuple(images.shape[1:]) != self.image_shape_:
            raise Invalid(
                f"images must have shape [channels, height, width] = {list(self.image_shape_)} as in "
                f"training, got {list(images.shape[1:])}; resize them first"
            )
        return {"input": images}

    def _build(self, inputs: list[np.ndarray], n_classes: int) -> nn.Module:
        return _CNNNetwork(inputs[0], tuple(self.channels), self.hidden_size, float(self.dropout), n_classes)

    def _row_specs(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [(self.image_shape_, torch.float32)]
