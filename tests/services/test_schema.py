"""Request validation: every bad request is a 4xx that names the field and the problem;
the OpenAPI document says what a valid request is."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.schema import Contract, RequestError, openapi

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
        (b'{"inputs": [[1, 0, NaN]]}', 400, "body", "not valid JSON"),  # NaN is not JSON
        (body({"inputs": [[1, 0, 0]] * 5}), 422, "inputs", "at most 4 per request"),
        # Strings that numpy would happily read as numbers.
        (body({"inputs": [["1", 0, 0]]}), 422, "inputs[0][0]", "expected a number (got '1')"),
        (body({"inputs": [[" 1_0 ", 0, 0]]}), 422, "inputs[0][0]", "got ' 1_0 '"),
        (body({"inputs": [[1, 0, "1e3"]]}), 422, "inputs[0][2]", "expected a number"),
        # A boolean among numbers (numpy would make it 0/1), and only booleans.
        (body({"inputs": [[True, True, True]]}), 422, "inputs[0][0]", "got true"),
        # Too large for a double; deeper than orjson's 1024 levels; deep but parseable.
        (b'{"inputs": [[' + b"9" * 400 + b", 0, 0]]}", 400, "body", "number is too large"),
        (b"[" * 2000 + b"]" * 2000, 400, "body", "nested too deeply"),
        (b"[" * 1000 + b"]" * 1000, 422, "body", "(got a list of 1)"),
        (b'{"inputs": [' + b"[" * 1000 + b"]" * 1000 + b"]}", 422, "inputs[0][0]", "a list"),
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


@pytest.mark.parametrize("label", [False, True, 1.0, 3.0, "1", None], ids=repr)
def test_feedback_label_is_strict(label: object) -> None:
    """`false` is not class 0, `1.0` not class 1, "1" not class 1."""
    with pytest.raises(RequestError) as err:
        CONTRACT.parse_feedback(body({"id": "x-0", "label": label}))
    assert (err.value.status, err.value.field) == (422, "label")


def test_string_classes_take_string_labels_only() -> None:
    named = Contract.from_schema({**SCHEMA, "classes": ["cat", "dog", "1"]})
    assert named.parse_feedback(body({"id": "x", "label": "dog"})).label == "dog"
    assert named.parse_feedback(body({"id": "x", "label": "1"})).label == "1"
    with pytest.raises(RequestError, match="not one of the classes"):
        named.parse_feedback(body({"id": "x", "label": 1}))


def test_openapi_document_names_features_ranges_classes_and_limits() -> None:
    doc = openapi(CONTRACT, max_body=1000, auth=True, title="t", version="1")
    schemas = doc["components"]["schemas"]
    assert schemas["Row"]["prefixItems"] == [
        {"title": "a", "type": "number", "minimum": 0.0, "maximum": 16.0},
        {"title": "b", "type": "number", "minimum": -1.0, "maximum": 1.0},
        {"title": "c", "type": "number"},  # no range in the schema: none in the document
    ]
    assert schemas["PredictRequest"]["properties"]["inputs"]["maxItems"] == 4
    assert schemas["FeedbackRequest"]["properties"]["label"]["enum"] == [0, 1, 2]
    probabilities = schemas["PredictResponse"]["properties"]["predictions"]["items"]
    assert probabilities["properties"]["probabilities"]["maxItems"] == 3
    assert "1000 bytes" in doc["info"]["description"]
    predict = doc["paths"]["/v1/predict"]["post"]
    assert predict["security"] == [{"bearer": []}, {"apiKey": []}] and "401" in predict["responses"]
    open_doc = openapi(CONTRACT, max_body=1000, auth=False, title="t", version="1")
    assert open_doc["paths"]["/v1/predict"]["post"]["security"] == []
    assert "401" not in open_doc["paths"]["/v1/predict"]["post"]["responses"]
