"""The gRPC benchmark's client floor: a server that answers every ``ModelInfer`` at once.

grpc's threaded server, with ``GRPC_EXPERIMENTS`` as ``learner predictor serve`` sets it,
answering every call with the same serialized
``ModelInferResponse`` (``label`` and ``probability``, as ``ads_ctr40`` answers): no
decoding, no model. Timed at the predictor's gRPC rate in the same round, it shows what of
a gRPC latency is grpc's own, the load generator's and the machine's.

    .venv/bin/python benchmarks/grpc_echo.py --port 9001
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from openlearner.predictor.server import choose_grpc_engine


def answer() -> bytes:
    """The serialized response every call gets."""
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse(model_name="ads_ctr40", model_version="1")
    label = response.outputs.add(name="label", datatype="INT64", shape=[1])
    label.contents.int64_contents.append(0)
    probability = response.outputs.add(name="probability", datatype="FP32", shape=[1])
    probability.contents.fp32_contents.append(0.5)
    return response.SerializeToString()


def main() -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    choose_grpc_engine()
    import grpc

    body = answer()

    def infer(request: bytes, context: Any) -> bytes:
        return body

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}
    )
    server = grpc.server(ThreadPoolExecutor(32))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
