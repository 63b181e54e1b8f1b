"""What the drift-job tests share: one trained project (a real MLflow store with a
registered version and its training run), the alert webhook recorder, and windows of the
inference log written with the service's own log writer."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import Project, copy_of

MODEL = "digits-classifier"


@pytest.fixture(scope="package")
def trained(trained_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project whose pipeline ran once: digits-classifier v1 in its own store (a copy of
    the session's trained digits project, tests.conftest.trained_template)."""
    project = copy_of(trained_template, tmp_path_factory.mktemp("monitoring") / "project")
    project.set_params(monitor={"min_rows": 200})
    return project


class Recorder:
    """The alert webhook: records every JSON POST, answers 200."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.payloads.append(
                    json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alert"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def split_rows(
    project: Project, n: int, drift: str = "none"
) -> tuple[list[list[float]], list[int]]:
    """``n`` rows of the project's test split (cycled), distorted by ``drift`` the way
    `simulate-traffic --drift` does, and their true labels."""
    from monitoring import traffic
    from pipelines import config

    params = config.load(project.params_path)
    split = pd.read_parquet(project.root / params.paths.split("test"))
    features = params.data.feature_names
    low, high = params.data.feature_range or (0.0, 16.0)
    x = np.resize(split[features].to_numpy(np.float64), (n, len(features)))
    x = traffic.distort(x, drift, strength=1.0, low=low, high=high, rng=np.random.default_rng(0))
    labels = np.resize(split[params.data.target].to_numpy(), n)
    return x.tolist(), [int(v) for v in labels]


def write_log(log_dir: Path, features: list[list[Any]], predictions: list[Any], model: str) -> None:
    """Prediction records as the service writes them (its own InferenceLog), stamped now."""
    from services.inference_log import InferenceLog

    writer = InferenceLog(log_dir)
    now = time.time()
    writer.append(
        [
            {
                "type": "prediction",
                "id": f"t{now:.0f}-{i}",
                "request_id": f"t{now:.0f}",
                "ts": now,
                "model": model,
                "features": row,
                "prediction": pred,
            }
            for i, (row, pred) in enumerate(zip(features, predictions, strict=True))
        ]
    )
    writer.close()
