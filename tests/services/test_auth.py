"""Which credentials a request presents (services.gateway.credentials), read from real
Starlette headers as the service receives them: an empty value counts as absent, and every
non-empty one must be a valid key (issue 22: an empty X-API-Key overrode a valid Bearer
token, and of two X-API-Key headers only the first was checked)."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from services.gateway import Gateway, credentials
from services.schema import RequestError

KEY = b"key-alpha"


def headers(*pairs: tuple[str, str]) -> Headers:
    return Headers(raw=[(k.lower().encode(), v.encode()) for k, v in pairs])


@pytest.mark.parametrize(
    ("pairs", "presented"),
    [
        ([], []),
        ([("X-API-Key", "")], []),
        ([("Authorization", "Bearer ")], []),
        ([("X-API-Key", "key-alpha")], [KEY]),
        ([("Authorization", "Bearer key-alpha")], [KEY]),
        ([("Authorization", "bearer  key-alpha ")], [KEY]),
        ([("X-API-Key", ""), ("Authorization", "Bearer key-alpha")], [KEY]),
        ([("X-API-Key", "key-alpha"), ("X-API-Key", "wrong")], [KEY, b"wrong"]),
        ([("Authorization", "Basic a2V5")], []),
    ],
    ids=[
        "none",
        "empty-x-api-key",
        "empty-bearer",
        "x-api-key",
        "bearer",
        "bearer-any-case",
        "empty-x-api-key-and-bearer",
        "two-x-api-keys",
        "basic-is-not-a-key",
    ],
)
def test_the_credentials_a_request_presents(
    pairs: list[tuple[str, str]], presented: list[bytes]
) -> None:
    assert credentials(headers(*pairs)) == presented


def authorize(*pairs: tuple[str, str]) -> int:
    """The service's own admission, with the keys of MODELYARD_API_KEYS."""
    try:
        Gateway([KEY, b"key-beta"]).admit(headers(*pairs), "predict")
    except RequestError as refused:
        return refused.status
    return 200


def test_an_empty_x_api_key_does_not_hide_a_valid_bearer_token() -> None:
    assert authorize(("X-API-Key", ""), ("Authorization", "Bearer key-beta")) == 200


def test_a_second_wrong_x_api_key_is_refused_not_skipped() -> None:
    assert authorize(("X-API-Key", "key-alpha"), ("X-API-Key", "wrong")) == 401
    assert authorize(("X-API-Key", "key-alpha"), ("Authorization", "Bearer wrong")) == 401


def test_no_credential_and_only_empty_ones_are_missing() -> None:
    assert authorize() == 401 and authorize(("X-API-Key", " ")) == 401
