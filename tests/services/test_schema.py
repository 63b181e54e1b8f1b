"""Request validation: every bad request is a 4xx that names the field and the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.schema import MAX_BODY_BYTES, Contract, RequestError

SCHEMA = {
    "target": "label",
    "classes": [0, 1, 2],
    "features": [
        {"name": "a", "min": 0, "max": 16},
        {"name": "b", "min": -1, "max": 1},
        {"name": "c"},
    ],
}
CONTRACT = Contract.from_schema(SCHEMA, max_batch=4)


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_valid_rows_become_float32() -> None:
    x = CONTRACT.parse_predict(body({"inputs": [[0, 0.5, 1e9], [16, -1, -3]]}))
    assert x.dtype == np.float32 and x.shape == (2, 3)


@pytest.mark.parametrize(
    ("payload", "status", "field", "needle"),
    [
        (b"{not json", 400, "body", "not valid JSON"),
        (body([1, 2, 3]), 422, "body", "valid dictionary"),
        (body({}), 422, "inputs", "Field required"),
        (body({"inputs": []}), 422, "inputs", "at least 1"),
        (body({"inputs": [[1, 0, 0]], "extra": 1}), 422, "extra", "Extra inputs"),
        (body({"inputs": [[1, "x", 0]]}), 422, "inputs[0][1]", "expected a number (got 'x')"),
        (body({"inputs": [[1, True, 0]]}), 422, "inputs[0][1]", "expected a number (got true)"),
        (body({"inputs": [1, 2, 3]}), 422, "inputs[0]", "valid list"),
        (body({"inputs": [[1, 0]]}), 422, "inputs[0]", "has 2 values; expected 3"),
        (
            body({"inputs": [[17, 0, 0]]}),
            422,
            "inputs[0][0]",
            "a = 17 is outside the training range [0, 16]",
        ),
        (body({"inputs": [[1, 0, 0], [1, -2, 0]]}), 422, "inputs[1][1]", "b = -2"),
        (b'{"inputs": [[1, 0, NaN]]}', 422, "inputs[0][2]", "finite"),
        (body({"inputs": [[1, 0, 0]] * 5}), 413, "inputs", "at most 4 per request"),
        (b" " * (MAX_BODY_BYTES + 1), 413, "body", "at most"),
    ],
)
def test_bad_requests_name_the_problem(
    payload: bytes, status: int, field: str, needle: str
) -> None:
    with pytest.raises(RequestError) as err:
        CONTRACT.parse_predict(payload)
    assert (err.value.status, err.value.field) == (status, field)
    assert needle in err.value.message
    assert err.value.body() == {"error": {"field": field, "message": err.value.message}}


def test_feedback_label_must_be_a_class() -> None:
    assert CONTRACT.parse_feedback(body({"id": "x-0", "label": 2})).label == 2
    with pytest.raises(RequestError, match="not one of the classes"):
        CONTRACT.parse_feedback(body({"id": "x-0", "label": 7}))
    with pytest.raises(RequestError) as err:
        CONTRACT.parse_feedback(body({"label": 1}))
    assert err.value.field == "id"
