"""Prediction ids the service can recognise as its own, without keeping any state.

A request's id is 32 hex digits, as a uuid4's: 16 random ones and the first 16 of an
HMAC-SHA256 of them under ``MODELYARD_ID_KEY``; each row's id is ``<request id>-<row>``.
Any replica (any worker, any pod) holding the same key tells an id it issued from one
it never did, however long ago and across restarts, so ``/v1/feedback`` can answer 404
for an id the service never gave out instead of "recorded". Without a key the ids are
plain random ones and feedback is recorded as unverified (``verified: null``): the
service says it cannot know. Either way the harvest joins a label to a logged prediction
by id, so a label for an id nobody predicted never becomes training data.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

MIN_KEY_CHARS = 16
ROW_ID = re.compile(r"^(?P<nonce>[0-9a-f]{16})(?P<tag>[0-9a-f]{16})-(?P<row>\d{1,6})$")


def _tag(key: bytes, nonce: str) -> str:
    return hmac.new(key, nonce.encode(), hashlib.sha256).hexdigest()[:16]


def request_id(key: bytes | None) -> str:
    """A new request id: random, and tagged when there is a ``key``."""
    nonce = secrets.token_hex(8)
    return nonce + (_tag(key, nonce) if key else secrets.token_hex(8))


def issued(key: bytes | None, prediction_id: str) -> bool | None:
    """Whether the service issued ``prediction_id`` (a row id): None without a key (it
    cannot know), else True or False."""
    if key is None:
        return None
    found = ROW_ID.match(prediction_id)
    if found is None:
        return False
    return hmac.compare_digest(_tag(key, found["nonce"]), found["tag"])
