"""Request and response contract of the service, built from the training schema.

The training schema (``schema.json`` from ``prepare``, carried by every registered
version) names the features in order, their allowed ranges and the classes. This module
turns it into request validation that answers with a 4xx and a message naming the
field and the problem, and into the OpenAPI document served at ``/docs.json``. Pure:
numpy, orjson and pydantic only, no BentoML, no training code.

JSON is parsed by orjson only: it refuses nesting deeper than 1024 levels and numbers
that do not fit a double, so neither can reach the validation below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
)

MAX_BATCH = 256
MAX_BODY_BYTES = 2 * 1024 * 1024


class RequestError(Exception):
    """A bad request: HTTP ``status`` and a message that says what to fix."""

    def __init__(
        self, status: int, field: str, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field
        self.message = message
        self.retry_after = retry_after  # seconds: sent as Retry-After (429, 503)

    def body(self) -> dict[str, Any]:
        return {"error": {"field": self.field, "message": self.message}}


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # One row per prediction, features in the order /v1/metadata lists them.
    inputs: list[list[StrictInt | StrictFloat]] = Field(min_length=1)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128, description="a prediction id from /v1/predict")
    # Strict: `false` is not class 0 and `3.0` is not class 3.
    label: StrictInt | StrictStr


@dataclass(frozen=True)
class Contract:
    """What a valid request looks like for one model version."""

    features: list[str]
    classes: list[Any]
    low: np.ndarray
    high: np.ndarray
    max_batch: int = MAX_BATCH

    @classmethod
    def from_schema(cls, schema: dict[str, Any], max_batch: int = MAX_BATCH) -> Contract:
        feats = schema["features"]
        low = np.array([f.get("min", -np.inf) for f in feats], dtype=np.float64)
        high = np.array([f.get("max", np.inf) for f in feats], dtype=np.float64)
        return cls([f["name"] for f in feats], list(schema["classes"]), low, high, max_batch)

    def parse_predict(self, body: bytes) -> np.ndarray:
        """The request body as a float32 [rows, features] array, or RequestError.

        Fast path: orjson + one numpy conversion. Anything unusual (wrong shape or
        types, strings, booleans) takes the slow path through pydantic, whose errors
        name the exact field.
        """
        data = _load(body)
        x = self._fast(data, body)
        if x is None:
            rows = _model(PredictRequest, data).inputs
            x = self._shape(rows)
        return self._check_values(x)

    def _fast(self, data: Any, body: bytes) -> np.ndarray | None:
        if b"true" in body or b"false" in body:
            return None  # numpy would read a boolean as 0/1
        if not isinstance(data, dict) or len(data) != 1:
            return None
        rows = data.get("inputs")
        if not isinstance(rows, list) or not rows:
            return None
        try:
            x = np.array(rows)
        except ValueError:  # rows of different lengths
            return None
        # Only numbers: numpy would otherwise parse strings such as "1" or " 1_0 ".
        if x.ndim != 2 or x.dtype.kind not in "iuf":
            return None
        if x.shape[1] != len(self.features) or len(x) > self.max_batch:
            return self._shape(rows)  # raises with the precise message
        return x.astype(np.float64, copy=False)

    def _shape(self, rows: list[Any]) -> np.ndarray:
        if len(rows) > self.max_batch:
            raise RequestError(
                422, "inputs", f"{len(rows)} rows; at most {self.max_batch} per request"
            )
        width = len(self.features)
        for i, row in enumerate(rows):
            if len(row) != width:
                raise RequestError(
                    422,
                    f"inputs[{i}]",
                    f"has {len(row)} values; expected {width} ({self.features[0]}..{self.features[-1]})",
                )
        return np.asarray(rows, dtype=np.float64)

    def _check_values(self, x: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(x)
        if bad.any():
            i, j = map(int, np.argwhere(bad)[0])
            raise RequestError(
                422,
                f"inputs[{i}][{j}]",
                f"{self.features[j]} is {x[i, j]}; expected a finite number",
            )
        out = (x < self.low) | (x > self.high)
        if out.any():
            i, j = map(int, np.argwhere(out)[0])
            raise RequestError(
                422,
                f"inputs[{i}][{j}]",
                f"{self.features[j]} = {x[i, j]:g} is outside the training range "
                f"[{self.low[j]:g}, {self.high[j]:g}]",
            )
        return x.astype(np.float32)

    def parse_feedback(self, body: bytes) -> FeedbackRequest:
        req: FeedbackRequest = _model(FeedbackRequest, _load(body))
        # Same type and value: the label 7 is not the class "7", nor the other way round.
        if not any(type(req.label) is type(c) and req.label == c for c in self.classes):
            raise RequestError(
                422, "label", f"{req.label!r} is not one of the classes {self.classes}"
            )
        return req


def _load(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        detail = str(exc)  # orjson's words, with the position
        if "infinity" in detail:
            problem = "a number is too large for a 64-bit float"
        elif "depth limit" in detail:
            problem = "nested too deeply"
        else:
            problem = "not valid JSON"
        raise RequestError(400, "body", f"{problem} ({detail})") from None


def _model(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"]
        # inputs.0.1.int -> inputs[0][1] (the trailing part names a union member, not a field)
        field = (
            (str(loc[0]) + "".join(f"[{p}]" for p in loc[1:] if isinstance(p, int)))
            if loc
            else "body"
        )
        msg = err["msg"]
        if field.startswith("inputs[") and err["type"].startswith(("int", "float")):
            msg = "expected a number"
        raise RequestError(422, field, f"{msg} (got {_short(err.get('input'))})") from None


def _short(value: Any) -> str:
    """A short description of a value for an error message. Containers are named, not
    printed: a body nested a thousand levels deep must not be rendered back."""
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value) if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= 60 else text[:57] + "..."


# -- OpenAPI -------------------------------------------------------------------------------


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def openapi(
    contract: Contract, *, max_body: int, auth: bool, title: str, version: str
) -> dict[str, Any]:
    feats: list[dict[str, Any]] = []
    for name, lo, hi in zip(contract.features, contract.low, contract.high, strict=True):
        item: dict[str, Any] = {"title": name, "type": "number"}
        if np.isfinite(lo):
            item["minimum"] = float(lo)
        if np.isfinite(hi):
            item["maximum"] = float(hi)
        feats.append(item)
    width, n_classes = len(contract.features), len(contract.classes)
    label = {"enum": list(contract.classes), "description": "one of the model's classes"}
    limits = (
        f"At most {max_body} bytes per body (413 beyond it) and {contract.max_batch} rows per "
        "request (422 beyond it: a schema violation like any other)."
    )
    bad = {
        "400": _error_response("The body is not JSON (syntax, nesting, a number too large)."),
        "413": _error_response(limits),
        "422": _error_response("The JSON does not match the schema; `field` names where."),
    }
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}] if auth else []
    if auth:
        bad["401"] = _error_response("Missing or invalid API key (or two different keys).")
        bad["403"] = _error_response("The key lacks this route's scope.")
        bad["429"] = _error_response(
            "The key's rate limit or daily quota (per worker) is used up: retry after the "
            "Retry-After header's seconds."
        )
    # Load shedding: a replica at its bound of requests in flight answers at once.
    overloaded = _error_response(
        "This replica is at its bound of requests in flight (load shedding): retry after "
        "Retry-After seconds."
    )
    bad["503"] = overloaded
    guarded = ("401", "403", "429", "503")

    def op(
        summary: str, ok: dict[str, Any], request: str | None, errors: dict[str, Any]
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "summary": summary,
            "security": security,
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": ok}},
                },
                **errors,
            },
        }
        if request:
            spec["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}
                },
            }
        return spec

    text = {"text/plain": {"schema": {"type": "string"}}}
    probe = {"responses": {"200": {"description": "OK", "content": text}}, "security": []}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "Predictions from one registered model version, served with ONNX Runtime. "
                f"Each row holds the {width} features in order ({contract.features[0]} .. "
                f"{contract.features[-1]}) within their training ranges. {limits} "
                'Every error is JSON: {"error": {"field", "message"}}.'
            ),
        },
        "paths": {
            "/v1/predict": {
                "post": op(
                    "Predict the class of each row",
                    {"$ref": "#/components/schemas/PredictResponse"},
                    "PredictRequest",
                    bad,
                )
            },
            "/v1/feedback": {
                "post": op(
                    "Record the true label of a prediction (for monitoring)",
                    {"$ref": "#/components/schemas/FeedbackResponse"},
                    "FeedbackRequest",
                    {
                        **bad,
                        "404": _error_response(
                            "The service never issued this prediction id (with "
                            "MODELYARD_ID_KEY set, every replica recognises its own ids)."
                        ),
                        "503": _error_response(
                            "This replica is at its bound of requests in flight, or the "
                            "inference log could not record the label (a full or failing "
                            "disk; nothing was kept): send it again after Retry-After seconds."
                        ),
                    },
                )
            },
            "/v1/metadata": {
                "get": op(
                    "The served model: version, lineage, metrics, features, classes",
                    {"$ref": "#/components/schemas/Metadata"},
                    None,
                    {k: v for k, v in bad.items() if k in guarded},
                )
            },
            "/livez": {"get": {"summary": "Liveness probe (open)", **probe}},
            "/readyz": {
                "get": {
                    "summary": "Readiness probe: the model is loaded and this replica is not "
                    "shedding load (open)",
                    **probe,
                }
            },
            "/metrics": {"get": {"summary": "Prometheus metrics (open)", **probe}},
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "schemas": {
                "Row": {
                    "type": "array",
                    "description": f"The {width} features, in this order.",
                    "prefixItems": feats,
                    "items": False,
                    "minItems": width,
                    "maxItems": width,
                },
                "PredictRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["inputs"],
                    "properties": {
                        "inputs": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": contract.max_batch,
                            "items": {"$ref": "#/components/schemas/Row"},
                        }
                    },
                },
                "PredictResponse": {
                    "type": "object",
                    "required": ["request_id", "model", "predictions"],
                    "properties": {
                        "request_id": {"type": "string"},
                        "model": {"type": "string", "description": "NAME/VERSION"},
                        "predictions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["id", "label", "probabilities"],
                                "properties": {
                                    "id": {"type": "string", "description": "for /v1/feedback"},
                                    "label": label,
                                    "probabilities": {
                                        "type": "array",
                                        "description": "one per class, in class order",
                                        "minItems": n_classes,
                                        "maxItems": n_classes,
                                        "items": {"type": "number", "minimum": 0, "maximum": 1},
                                    },
                                },
                            },
                        },
                    },
                },
                "FeedbackRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["id", "label"],
                    "properties": {
                        "id": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 128,
                            "description": "a prediction id from /v1/predict",
                        },
                        "label": label,
                    },
                },
                "FeedbackResponse": {
                    "type": "object",
                    "required": ["id", "label", "recorded"],
                    "properties": {
                        "id": {"type": "string"},
                        "label": label,
                        "recorded": {"type": "boolean"},
                        "verified": {
                            "type": ["boolean", "null"],
                            "description": "true: the service issued this id "
                            "(MODELYARD_ID_KEY); null: it has no key and cannot tell",
                        },
                    },
                },
                "Metadata": {
                    "type": "object",
                    "required": ["name", "version", "onnx_sha256", "features", "classes"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "variant": {"type": "string"},
                        "git_commit": {"type": ["string", "null"]},
                        "data_md5": {"type": ["string", "null"]},
                        "onnx_sha256": {"type": "string"},
                        "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
                        "features": {
                            "type": "array",
                            "items": {"type": "string"},
                            "minItems": width,
                            "maxItems": width,
                        },
                        "classes": {"type": "array", "minItems": n_classes, "maxItems": n_classes},
                        "max_batch": {"type": "integer"},
                        "max_body_bytes": {"type": "integer"},
                        "auth": {"enum": ["api-key", "disabled"]},
                        "shadow": {
                            "type": "object",
                            "description": "the challenger scored in shadow (present only "
                            "when the Bento carries one); enabled: false when "
                            "MODELYARD_SHADOW=off",
                            "required": ["name", "version", "enabled"],
                            "properties": {
                                "name": {"type": "string"},
                                "version": {"type": "string"},
                                "enabled": {"type": "boolean"},
                                "variant": {"type": "string"},
                                "onnx_sha256": {"type": "string"},
                                "queue": {"type": "integer"},
                            },
                        },
                        "inference_log": {
                            "type": "object",
                            "description": "present only while this worker's inference log "
                            "fails to write: predictions are answered but not logged, "
                            "feedback gets 503 (modelyard_inference_log_errors_total counts)",
                            "required": ["status", "since", "last_error"],
                            "properties": {
                                "status": {"const": "degraded"},
                                "since": {"type": "number", "description": "UNIX time"},
                                "last_error": {"type": "string"},
                            },
                        },
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["field", "message"],
                            "properties": {
                                "field": {
                                    "type": "string",
                                    "description": "where: inputs[0][3], body, ...",
                                },
                                "message": {"type": "string", "description": "what is wrong"},
                            },
                        }
                    },
                },
            },
        },
    }
