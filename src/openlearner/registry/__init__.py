"""Registry: immutable model versions (ONNX, content-addressed), aliases and lineage."""

from openlearner.registry.signature import ServingSpec, Signature, TensorSpec
from openlearner.registry.store import AliasMove, ModelRegistry, ModelVersion

__all__ = ["AliasMove", "ModelRegistry", "ModelVersion", "ServingSpec", "Signature", "TensorSpec"]
