"""Request and response contract of the service, built from the training schema.

The training schema (``schema.json`` from ``prepare``, carried by every registered
version) names the features in order, their allowed ranges and the classes. This module
turns it into request validation that answers with a 4xx and a message naming the
field and the problem. Pure: numpy and pydantic only, no BentoML, no training code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

MAX_BATCH = 256
MAX_BODY_BYTES = 2 * 1024 * 1024


class RequestError(Exception):
    """A bad request: HTTP ``status`` and a message that says what to fix."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status = status
        self.field = field
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"field": self.field, "message": self.message}}


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # One row per prediction, features in the order /v1/metadata lists them.
    inputs: list[list[StrictInt | StrictFloat]] = Field(min_length=1)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128, description="a prediction id from /v1/predict")
    label: int | str


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

        Fast path: orjson + one numpy conversion. Anything unusual (bad JSON, wrong
        shape or types, booleans) takes the slow path through pydantic, whose errors
        name the exact field.
        """
        x = self._fast(body)
        if x is None:
            rows = _model(PredictRequest, body).inputs
            x = self._shape(rows)
        return self._check_values(x)

    def _fast(self, body: bytes) -> np.ndarray | None:
        if len(body) > MAX_BODY_BYTES or b"true" in body or b"false" in body:
            return None
        try:
            data = orjson.loads(body)
            rows = data["inputs"]
            if (
                not isinstance(data, dict)
                or len(data) != 1
                or not isinstance(rows, list)
                or not rows
            ):
                return None
            x = np.array(rows, dtype=np.float64)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if x.ndim != 2:
            return None
        if x.shape[1] != len(self.features) or len(x) > self.max_batch:
            return self._shape(rows)  # raises with the precise message
        return x

    def _shape(self, rows: list[Any]) -> np.ndarray:
        if len(rows) > self.max_batch:
            raise RequestError(
                413, "inputs", f"{len(rows)} rows; at most {self.max_batch} per request"
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
        req = _model(FeedbackRequest, body)
        if str(req.label) not in {str(c) for c in self.classes}:
            raise RequestError(
                422, "label", f"{req.label!r} is not one of the classes {self.classes}"
            )
        return req


def _model(model: type[BaseModel], body: bytes) -> Any:
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(413, "body", f"{len(body)} bytes; at most {MAX_BODY_BYTES}")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, "body", f"not valid JSON ({exc})") from None
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
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
