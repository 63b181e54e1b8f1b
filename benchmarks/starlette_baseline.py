"""The bare baseline for benchmarks/workers.py: the same ONNX model behind a plain
Starlette route on uvicorn (orjson in and out, no auth, no validation, no log, no
BentoML). Run: python starlette_baseline.py MODEL.onnx PORT WORKERS"""

from __future__ import annotations

import os
import sys

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create() -> Starlette:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = ort.InferenceSession(
        os.environ["BASELINE_MODEL"], options, providers=["CPUExecutionProvider"]
    )

    async def predict(request: Request) -> Response:
        x = np.asarray(orjson.loads(await request.body())["inputs"], dtype=np.float32)
        (probs,) = model.run(["probabilities"], {model.get_inputs()[0].name: x})
        body = {"labels": probs.argmax(1).tolist(), "probabilities": probs.round(6).tolist()}
        return Response(orjson.dumps(body), media_type="application/json")

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])


if __name__ == "__main__":
    os.environ["BASELINE_MODEL"] = sys.argv[1]
    uvicorn.run(
        "starlette_baseline:create",
        factory=True,
        host="127.0.0.1",
        port=int(sys.argv[2]),
        workers=int(sys.argv[3]),
        log_level="warning",
        access_log=False,
        app_dir=os.path.dirname(os.path.abspath(__file__)),
    )
