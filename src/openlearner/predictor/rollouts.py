"""Rollouts from registry aliases: a ``canary`` takes a stable share of traffic, a ``shadow``
sees a copy of it.

Both apply to requests for a model's default alias (``production``). A request goes to the
canary version when a hash of its routing key falls in the canary's share; the key is the
first row's first entity key for Feature Store models (so an entity always sees the same
version), else the request id (random when the client sent none). The share is
``canary_percent`` of the predictor, or the canary version's tag ``canary_percent``.
A shadow version runs on a copy of every request after the answer is computed; its
outputs are logged next to the served ones and never returned.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openlearner.errors import Invalid
from openlearner.registry.aliases import CANARY, SHADOW

if TYPE_CHECKING:
    from openlearner.predictor.model import LoadedModel
    from openlearner.predictor.protocol import InferenceRequest

__all__ = ["RolloutSettings", "in_canary", "routing_key"]


@dataclass(frozen=True)
class RolloutSettings:
    """Which aliases roll out, and the canary's default share of traffic."""

    canary_percent: float = 10.0
    canary_alias: str = CANARY
    shadow_alias: str = SHADOW

    def __post_init__(self) -> None:
        if not 0 <= self.canary_percent <= 100:
            raise Invalid(f"canary_percent is a percentage in [0, 100], not {self.canary_percent}")

    def percent_for(self, canary: LoadedModel) -> float:
        """The canary's share: its version's ``canary_percent`` tag, else the default."""
        tag = canary.version.tags.get("canary_percent")
        try:
            value = float(tag) if tag is not None else self.canary_percent
        except ValueError:
            return self.canary_percent
        return value if 0 <= value <= 100 else self.canary_percent


def routing_key(model: LoadedModel, request: InferenceRequest) -> str:
    """What a request is routed by: its first entity key, else its id, else something random."""
    serving = model.version.signature.serving
    if serving is not None and serving.entity_keys:
        key = serving.entity_keys[0].name
        tensor = next((t for t in request.inputs if t.name == key), None)
        if tensor is not None and tensor.data.size:
            return f"{key}={tensor.data.reshape(-1)[:1].tolist()[0]}"
    return request.id if request.id else uuid.uuid4().hex


def in_canary(key: str, percent: float) -> bool:
    """Whether ``key`` falls in the first ``percent`` of the hash space (stable across processes)."""
    bucket = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 10_000
    return bucket < round(percent * 100)
