"""The serving baseline from the textbook chapter: a minimal Flask app (`app.run`,
`/predict`) around the same ONNX model. No auth, no validation, no log: the floor a
hand-rolled service starts from. Run: python flask_baseline.py MODEL.onnx PORT"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
from flask import Flask, jsonify, request

model = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
app = Flask(__name__)


@app.route("/predict", methods=["POST"])
def predict():  # type: ignore[no-untyped-def]
    data = request.get_json()
    x = np.asarray(data["inputs"], dtype=np.float32)
    (probs,) = model.run(["probabilities"], {"features": x})
    return jsonify({"labels": probs.argmax(1).tolist(), "probabilities": probs.tolist()})


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[2]))
