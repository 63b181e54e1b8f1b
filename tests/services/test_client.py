"""services.client.Client against a real `bentoml serve` of a registered model: batching,
typed answers, feedback in the inference log, and every error path (4xx with the
server's field and message, wrong key, unreachable, 503 from a gateway in front)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pandas as pd
import pytest

from services.client import (
    BadResponse,
    Client,
    RateLimited,
    RequestRefused,
    ServiceUnavailable,
    Unauthorized,
)
from services.inference_log import read
from tests.conftest import free_port
from tests.services.live import API_KEY, Gateway, LiveApi

pytestmark = pytest.mark.slow


def labelled_rows(api: LiveApi, n: int) -> tuple[list[list[float]], list[int]]:
    test = pd.read_parquet(api.project.root / "data/prepared/test.parquet")
    test = pd.concat([test] * (n // len(test) + 1)).head(n)
    return test.drop(columns="label").to_numpy(float).tolist(), test["label"].tolist()


class Recorder(httpx.HTTPTransport):
    """The real transport, noting how many rows each /v1/predict request carried."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/predict":
            import json

            self.batches.append(len(json.loads(request.content)["inputs"]))
        return super().handle_request(request)


@pytest.fixture(scope="module")
def client(digits_api: LiveApi) -> Iterator[Client]:
    with Client(digits_api.url, api_key=API_KEY) as c:
        yield c


def test_metadata_is_typed(client: Client) -> None:
    meta = client.metadata()
    assert meta.name == "digits-classifier" and meta.version == "1"
    assert meta.features == tuple(f"pixel_{i}" for i in range(64))
    assert meta.classes == tuple(range(10))
    assert meta.max_batch == 256
    assert len(meta.onnx_sha256) == 64
    assert 0.5 < meta.metrics["accuracy"] <= 1
    assert meta.max_body_bytes and meta.max_body_bytes > 0


def test_feature_schema_carries_the_training_ranges(client: Client) -> None:
    features = client.feature_schema()
    assert [f.name for f in features] == [f"pixel_{i}" for i in range(64)]
    assert {(f.min, f.max) for f in features} == {(0.0, 16.0)}


def test_predict_batches_large_inputs_to_max_batch_and_keeps_order(digits_api: LiveApi) -> None:
    rows, labels = labelled_rows(digits_api, 600)
    recorder = Recorder()
    with Client(digits_api.url, api_key=API_KEY, transport=recorder) as c:
        answers = c.predict(np.array(rows))  # a numpy array works as well as lists
    assert recorder.batches == [256, 256, 88]
    assert len(answers) == 600 and len({a.id for a in answers}) == 600
    # In order: the answers are the true labels (a trained model), row for row.
    hits = sum(a.label == y for a, y in zip(answers, labels, strict=True))
    assert hits / 600 > 0.85
    first = answers[0]
    assert set(first.probabilities) == set(range(10))
    assert first.label == max(first.probabilities, key=first.probabilities.__getitem__)
    assert first.model == "digits-classifier/1"


def test_feedback_reaches_the_inference_log(client: Client, digits_api: LiveApi) -> None:
    rows, _ = labelled_rows(digits_api, 1)
    [answer] = client.predict(rows)
    client.feedback(answer.id, 4)
    lines = [r for r in read(digits_api.log_dir) if r.get("type") == "feedback"]
    assert {"id": answer.id, "label": 4} in [{"id": r["id"], "label": r["label"]} for r in lines]


def test_a_bad_row_is_refused_with_the_servers_field_and_its_row_in_the_input(
    client: Client, digits_api: LiveApi
) -> None:
    rows, _ = labelled_rows(digits_api, 300)
    rows[290][20] = 99.0  # in the second request (rows 256..299), its row 34
    with pytest.raises(RequestRefused) as caught:
        client.predict(rows)
    err = caught.value
    assert err.status == 422
    assert err.field == "inputs[34][20]"
    assert "pixel_20" in err.message and "99" in err.message and "[0, 16]" in err.message
    assert (err.offset, err.row, err.column) == (256, 290, 20)


def test_feedback_for_a_label_that_is_not_a_class_is_refused(client: Client) -> None:
    with pytest.raises(RequestRefused) as caught:
        client.feedback("some-id", 11)
    assert (caught.value.status, caught.value.field) == (422, "label")
    assert "not one of the classes" in caught.value.message


@pytest.mark.parametrize("key", ["wrong-key", None])
def test_a_wrong_or_missing_key_is_unauthorized(digits_api: LiveApi, key: str | None) -> None:
    with Client(digits_api.url, api_key=key) as c, pytest.raises(Unauthorized) as caught:
        c.metadata()
    assert caught.value.status == 401
    assert caught.value.field == "authorization"
    assert caught.value.message == ("invalid API key" if key else "missing API key")


def test_rows_that_json_cannot_carry_fail_before_sending(client: Client) -> None:
    with pytest.raises(ValueError, match=r"rows\[1\]\[3\] is nan"):
        client.predict([[0.0] * 64, [0.0] * 3 + [float("nan")] + [0.0] * 60])


def test_an_unreachable_api_is_retried_then_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    caplog.set_level(logging.WARNING, logger="services.client")
    with Client(url, retries=3, backoff=0.01) as c, pytest.raises(ServiceUnavailable) as caught:
        c.metadata()
    assert "cannot connect after 3 tries" in str(caught.value)
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2


# -- a gateway in front of the real API (as an Ingress is): 503s first, then it forwards ------


def test_503s_are_retried_until_the_api_answers(digits_api: LiveApi) -> None:
    with Gateway(digits_api.url, fail=2) as gateway:
        with Client(gateway.url, api_key=API_KEY, retries=3, backoff=0.01) as c:
            assert c.metadata().name == "digits-classifier"
        assert gateway.seen == 3


def test_503s_beyond_the_retries_are_unavailable(digits_api: LiveApi) -> None:
    with Gateway(
        digits_api.url, fail=5, body=b"<h1>503 Service Temporarily Unavailable</h1>"
    ) as gateway:
        with (
            Client(gateway.url, api_key=API_KEY, retries=3, backoff=0.01) as c,
            pytest.raises(ServiceUnavailable, match="HTTP 503 after 3 tries"),
        ):
            c.metadata()
        assert gateway.seen == 3


def test_a_500_is_not_retried_and_says_what_came_back(digits_api: LiveApi) -> None:
    with Gateway(digits_api.url, fail=5, status=500, body=b"upstream exploded") as gateway:
        with (
            Client(gateway.url, api_key=API_KEY, retries=3, backoff=0.01) as c,
            pytest.raises(BadResponse, match="HTTP 500: upstream exploded"),
        ):
            c.metadata()
        assert gateway.seen == 1


def test_a_4xx_that_is_not_the_apis_json_still_refuses_clearly(digits_api: LiveApi) -> None:
    with Gateway(digits_api.url, fail=5, status=404, body=b"<h1>404 Not Found</h1>") as gateway:
        with (
            Client(gateway.url, api_key=API_KEY, backoff=0.01) as c,
            pytest.raises(RequestRefused) as caught,
        ):
            c.metadata()
        assert (caught.value.status, caught.value.field) == (404, "body")
        assert "404 Not Found" in caught.value.message
        assert gateway.seen == 1


def limited(field: str) -> bytes:
    return json.dumps(
        {"error": {"field": field, "message": f"the key's {field} is used up"}}
    ).encode()


def test_a_rate_limit_is_waited_out_as_retry_after_says(digits_api: LiveApi) -> None:
    """Issue 22: a 429 for the key's rate is retried after the server's Retry-After."""
    with Gateway(
        digits_api.url, fail=1, status=429, body=limited("rate"), headers={"Retry-After": "1"}
    ) as gateway:
        with Client(gateway.url, api_key=API_KEY, retries=2, backoff=0.01) as c:
            started = time.monotonic()
            assert c.metadata().name == "digits-classifier"
            waited = time.monotonic() - started
        assert gateway.seen == 2 and waited >= 1.0  # a lower bound: the client waited


def test_a_used_up_quota_is_final_and_says_when_to_come_back(digits_api: LiveApi) -> None:
    with Gateway(
        digits_api.url, fail=5, status=429, body=limited("quota"), headers={"Retry-After": "3600"}
    ) as gateway:
        with (
            Client(gateway.url, api_key=API_KEY, retries=3, backoff=0.01) as c,
            pytest.raises(RateLimited) as caught,
        ):
            c.metadata()
        assert (caught.value.field, caught.value.retry_after) == ("quota", 3600.0)
        assert gateway.seen == 1


def test_a_shedding_replica_is_retried_but_a_long_retry_after_is_not(digits_api: LiveApi) -> None:
    with Gateway(
        digits_api.url, fail=1, status=503, body=limited("load"), headers={"Retry-After": "0"}
    ) as gateway:
        with Client(gateway.url, api_key=API_KEY, retries=2, backoff=0.01) as c:
            assert c.metadata().name == "digits-classifier"
        assert gateway.seen == 2
    with Gateway(digits_api.url, fail=5, status=503, headers={"Retry-After": "120"}) as gateway:
        with (
            Client(gateway.url, api_key=API_KEY, retries=3, backoff=0.01) as c,
            pytest.raises(ServiceUnavailable, match="Retry-After 120"),
        ):
            c.metadata()
        assert gateway.seen == 1
