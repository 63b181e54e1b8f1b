"""Servers shared by the client and web app tests (tests/services/live.py): the digits
model is trained and served once per session, for both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services.live import LiveApi, registered, serve_model


@pytest.fixture(scope="session")
def digits_api(
    server_tier: None, trained_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveApi]:
    """A real `bentoml serve` of a registered digits CNN (key: live.API_KEY)."""
    base = tmp_path_factory.mktemp("digits-api")
    project = registered(base / "project", "digits", template=trained_template)
    api = serve_model(project, base)
    yield api
    api.server.stop()
