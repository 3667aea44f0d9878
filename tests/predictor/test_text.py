"""A text model: clients send BYTES ``text``, the predictor tokenizes with the stored tokenizer."""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from starlette.testclient import TestClient

from openlearner import Settings, Workspace
from openlearner.predictor import DataPlane
from openlearner.predictor.rest import create_app

pytest.importorskip("torch")

TEXTS = [
    "good day sunshine",
    "bad awful day",
    "good good fun",
    "bad bad rain",
    "fine good",
    "awful rain",
] * 12
LABELS = [1, 0, 1, 0, 1, 0] * 12
PROBE = ["good sunshine", "awful bad rain", "never seen words", ""]


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Workspace, Any]]:
    """A workspace with ``sentiment``, a small LSTM over words, trained once for the module."""
    from openlearner.models.lstm import LSTMClassifier

    ws = Workspace.init(settings=Settings(home=tmp_path_factory.mktemp("text") / "ws", auth_token=None))
    model = LSTMClassifier(max_len=6, embedding_dim=4, hidden_size=4, epochs=2, seed=0).fit(TEXTS, LABELS)
    ws.registry.register("sentiment", model, sample=TEXTS[:12], alias="production")
    yield ws, model
    ws.close()


def test_text_in_probabilities_out_over_json_and_binary(texts: tuple[Workspace, Any]) -> None:
    ws, model = texts
    expected = model.predict_proba(PROBE)[:, 1]
    with TestClient(create_app(DataPlane(ws.registry, ws.features))) as client:
        meta = client.get("/v2/models/sentiment").json()
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(PROBE)], "data": PROBE}]}
        answer = client.post("/v2/models/sentiment/infer", json=body)
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o for o in answer.json()["outputs"]}
        np.testing.assert_allclose(outputs["probability"]["data"], expected, atol=1e-5)

        raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in PROBE)
        tensor = {"name": "text", "datatype": "BYTES", "shape": [len(PROBE)]}
        header = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]})
        binary = client.post(
            "/v2/models/sentiment/infer",
            content=header + raw,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        binary_outputs = {o["name"]: o for o in binary.json()["outputs"]}
        assert binary_outputs["probability"]["data"] == outputs["probability"]["data"]

        wrong = {"inputs": [{"name": "text", "datatype": "INT64", "shape": [1], "data": [3]}]}
        refused = client.post("/v2/models/sentiment/infer", json=wrong)
        assert refused.status_code == 400 and "text BYTES [-1]" in refused.json()["error"]


def test_library_mode_takes_texts(texts: tuple[Workspace, Any]) -> None:
    import openlearner

    ws, model = texts
    predicted = openlearner.Predictor(ws).predict("sentiment", inputs={"text": PROBE})
    np.testing.assert_allclose(predicted, model.predict_proba(PROBE)[:, 1], atol=1e-5)


def test_the_rollout_gates_compare_what_clients_send_text_not_token_ids(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from openlearner.errors import Conflict
    from openlearner.models.lstm import LSTMClassifier

    class TokenIds(LSTMClassifier):
        """The same graph served without its tokenizer: clients would have to send token ids."""

        def _serving_metadata(self) -> dict[str, Any]:
            return {}

    ws = Workspace.init(settings=Settings(home=tmp_path_factory.mktemp("text-gates") / "ws", auth_token=None))
    fit = {"max_len": 6, "embedding_dim": 4, "hidden_size": 4, "epochs": 1, "seed": 0}
    ws.registry.register(
        "sentiment", LSTMClassifier(**fit).fit(TEXTS, LABELS), sample=TEXTS[:12], alias="production"
    )
    ws.registry.register("sentiment", TokenIds(**fit).fit(TEXTS, LABELS), sample=TEXTS[:12])
    ws.registry.register(
        "sentiment", LSTMClassifier(**{**fit, "seed": 1}).fit(TEXTS, LABELS), sample=TEXTS[:12]
    )
    v1, v2 = ws.registry.get("sentiment", version=1), ws.registry.get("sentiment", version=2)
    assert v1.signature.inputs == v2.signature.inputs  # one graph: only what clients send differs
    assert [t.describe() for t in v1.client_signature.inputs] == ["text BYTES [-1]"]
    for alias in ("shadow", "canary"):
        with pytest.raises(Conflict, match=r"it needs input tokens INT64 .* that clients do not send"):
            ws.registry.promote("sentiment", 2, alias)
        ws.registry.promote("sentiment", 3, alias)  # another text model takes text: it passes
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "openlearner.cli.main",
            "--home",
            str(ws.root),
            "models",
            "show",
            "sentiment",
            "--version",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "inputs     text BYTES [-1]\n" in shown.stdout, shown.stderr  # what clients send
    ws.registry.set_alias("sentiment", "shadow", 2)  # forced past the gate, it blocks production's move
    with pytest.raises(Conflict, match="the shadow \\(version 2\\) could not take its requests"):
        ws.registry.promote("sentiment", 3)
    ws.close()
