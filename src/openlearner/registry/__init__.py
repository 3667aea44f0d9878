"""Registry: immutable model versions (ONNX, content-addressed), aliases, lineage and replicas."""

from openlearner.registry.aliases import AliasMove
from openlearner.registry.replication import ArtifactProblem, ReplicationReport, VerificationReport
from openlearner.registry.signature import ServingSpec, Signature, TensorSpec
from openlearner.registry.store import ModelRegistry, ModelVersion

__all__ = [
    "AliasMove",
    "ArtifactProblem",
    "ModelRegistry",
    "ModelVersion",
    "ReplicationReport",
    "ServingSpec",
    "Signature",
    "TensorSpec",
    "VerificationReport",
]
