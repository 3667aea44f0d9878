"""The predictor benchmark's floor: a bare ASGI endpoint around the same ONNX Runtime session.

No protocol work: the body is ``{"input": [f1, ..., fn]}`` (one row, the features already
joined), the answer ``{"probability": p}``. Served by uvicorn like the predictor.

    .venv/bin/python benchmarks/predictor_floor.py --graph model.onnx --port 9000
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn


def make_app(graph: bytes) -> Any:
    """An ASGI callable answering every POST with the session's probability for the posted row."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":  # readiness
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        row = np.asarray(orjson.loads(body)["input"], dtype=np.float32).reshape(1, -1)
        probability = session.run(["probability"], {name: row})[0]
        payload = orjson.dumps({"probability": float(probability[0])})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


def main() -> None:
    """Serve the floor until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--graph", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with open(args.graph, "rb") as handle:
        app = make_app(handle.read())
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
