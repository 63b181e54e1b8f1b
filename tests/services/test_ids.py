"""Prediction ids the service recognises as its own (services/ids.py), with no state."""

from __future__ import annotations

import re

from services import ids

KEY = b"k" * 32


def test_an_id_issued_under_the_key_is_recognised_by_any_holder_of_it() -> None:
    rid = ids.request_id(KEY)
    assert re.fullmatch(r"[0-9a-f]{32}", rid)  # the shape a uuid4's hex had
    assert ids.issued(KEY, f"{rid}-0") is True and ids.issued(KEY, f"{rid}-41") is True
    assert ids.issued(b"another key, 32 bytes long......", f"{rid}-0") is False


def test_a_made_up_changed_or_malformed_id_is_not_the_services() -> None:
    rid = ids.request_id(KEY)
    flipped = rid[:20] + ("0" if rid[20] != "0" else "1") + rid[21:]  # one digit of the tag
    renonced = ("0" if rid[0] != "0" else "1") + rid[1:]  # one digit of the random part
    for made_up in (
        f"{flipped}-0",
        f"{renonced}-0",
        "0" * 32 + "-0",
        rid,  # no row
        f"{rid}-x",
        "not-an-id",
        f"{rid.upper()}-0",
    ):
        assert ids.issued(KEY, made_up) is False, made_up


def test_without_a_key_the_service_cannot_tell() -> None:
    rid = ids.request_id(None)
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert ids.issued(None, f"{rid}-0") is None and ids.issued(None, "made-up") is None
