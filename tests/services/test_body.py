"""Which request bodies the API reads (services.edge.check_encoding): plain ones only. A
gzip body was read as if it were plain JSON (issue 22); now it is a 415 that says what to
send. (Over HTTP against `bentoml serve`: tests/services/test_http.py.)"""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from services.edge import check_encoding
from services.schema import RequestError


def headers(**pairs: str) -> Headers:
    return Headers({k.replace("_", "-"): v for k, v in pairs.items()})


@pytest.mark.parametrize(
    "pairs",
    [
        {},
        {"content_encoding": "identity"},
        {"transfer_encoding": "chunked"},
        {"transfer_encoding": "Chunked"},
    ],
    ids=["plain", "identity", "chunked", "chunked-any-case"],
)
def test_a_plain_body_is_read(pairs: dict[str, str]) -> None:
    check_encoding(headers(**pairs))


@pytest.mark.parametrize(
    ("pairs", "field", "says"),
    [
        ({"content_encoding": "gzip"}, "content-encoding", "gzip bodies are not accepted"),
        ({"content_encoding": "br"}, "content-encoding", "br bodies are not accepted"),
        ({"transfer_encoding": "gzip, chunked"}, "transfer-encoding", "gzip transfer coding"),
    ],
    ids=["gzip", "brotli", "gzip-chunked"],
)
def test_a_coded_body_is_a_415_that_says_what_to_send(
    pairs: dict[str, str], field: str, says: str
) -> None:
    with pytest.raises(RequestError) as refused:
        check_encoding(headers(**pairs))
    assert (refused.value.status, refused.value.field) == (415, field)
    assert says in refused.value.message and "send the JSON uncompressed" in refused.value.message
