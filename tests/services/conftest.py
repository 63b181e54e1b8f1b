"""Servers shared by the client and web app tests (tests/services/live.py): the digits
model is trained and served once per session, for both."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services.live import LiveApi, registered, serve_model


@pytest.fixture(scope="session")
def digits_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """A real `bentoml serve` of a registered digits CNN (key: live.API_KEY)."""
    base = tmp_path_factory.mktemp("digits-api")
    api = serve_model(registered(base / "project", "digits"), base)
    yield api
    api.server.stop()
