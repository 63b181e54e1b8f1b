"""The web app in-process (Starlette's TestClient) where no model API is needed: an API
that is down from the start, CSRF, the rate limit, 404s, uploads too large, settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from services.webapp.app import create_app
from services.webapp.settings import Settings, SettingsError
from tests.conftest import free_port


def dead_api(**overrides: object) -> Settings:
    defaults: dict[str, object] = {"secret": b"k", "api_tries": 2, "api_timeout": 2.0}
    return Settings(api_url=f"http://127.0.0.1:{free_port()}", **{**defaults, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def web() -> Iterator[TestClient]:
    with TestClient(create_app(dead_api()), raise_server_exceptions=False) as client:
        yield client


def test_an_api_that_is_down_gives_a_clear_page_not_a_blank_one(web: TestClient) -> None:
    for path in ("/", "/model"):
        response = web.get(path)
        assert response.status_code == 503
        assert "text/html" in response.headers["content-type"]
        assert "The model service is not available" in response.text
        assert "try again in a minute" in response.text
        assert "Traceback" not in response.text and "127.0.0.1" not in response.text


def test_every_response_carries_the_security_headers(web: TestClient) -> None:
    response = web.get("/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie


def test_a_post_without_the_csrf_token_is_refused(web: TestClient) -> None:
    web.get("/")  # the cookie
    response = web.post("/predict", data={"strokes": "[[[1, 2]]]"})
    assert response.status_code == 403
    assert "Reload the page and try again" in response.text


def test_a_post_with_a_token_from_another_browser_is_refused(web: TestClient) -> None:
    from services.webapp import guard

    web.get("/")
    response = web.post("/predict", data={"csrf": guard.sign(b"k", "someone-elses-cookie")})
    assert response.status_code == 403


def test_an_upload_larger_than_the_limit_is_refused_before_reading_it() -> None:
    settings = dead_api(max_upload_bytes=1024)
    with TestClient(create_app(settings), raise_server_exceptions=False) as web:
        response = web.post("/batch", files={"file": ("big.csv", b"1," * 50_000)})
    assert response.status_code == 413
    assert "larger than 1 KiB" in response.text


def test_unknown_pages_and_methods_get_a_page(web: TestClient) -> None:
    missing = web.get("/nope")
    assert missing.status_code == 404 and "Page not found" in missing.text
    wrong = web.get("/predict")
    assert wrong.status_code == 405 and "<html" in wrong.text


def test_metrics_count_by_route_never_by_raw_path(web: TestClient) -> None:
    web.get("/")
    web.get("/wp-admin/setup-config.php")
    text = web.get("/metrics").text
    assert 'modelyard_webapp_requests_total{route="/",status="503"}' in text
    assert 'modelyard_webapp_requests_total{route="other",status="404"}' in text
    assert "wp-admin" not in text
    assert 'modelyard_webapp_api_errors_total{kind="unavailable"}' in text
    again = web.get("/metrics").text
    assert 'modelyard_webapp_requests_total{route="/metrics",status="200"}' in again


def test_too_many_requests_from_one_client_get_429_with_retry_after() -> None:
    settings = dead_api(rate_per_minute=6, burst=3, api_tries=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as web:
        statuses = [web.get("/").status_code for _ in range(4)]
        static = web.get("/static/style.css")
    assert statuses == [503, 503, 503, 429]
    assert static.status_code == 200  # static files are not counted
    assert web.get("/metrics").status_code == 200  # nor Prometheus' scrapes


def test_the_429_page_says_how_long_to_wait() -> None:
    settings = dead_api(rate_per_minute=6, burst=1, api_tries=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as web:
        web.get("/")
        response = web.get("/")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "10"
    assert "Please wait 10 s" in response.text


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "MODELYARD_API_URL must be the model API's base URL"),
        ({"MODELYARD_API_URL": "localhost:3000"}, "got 'localhost:3000'"),
        (
            {"MODELYARD_API_URL": "http://a", "MODELYARD_WEBAPP_RATE": "fast"},
            "RATE must be a number",
        ),
        ({"MODELYARD_API_URL": "http://a", "MODELYARD_WEBAPP_BURST": "-1"}, "must not be negative"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "MODELYARD_API_URL": "http://api:3000",
            "MODELYARD_API_KEY": "k1",
            "MODELYARD_WEBAPP_SECRET": "s",
            "MODELYARD_WEBAPP_PROXY_HOPS": "1",
        }
    )
    assert (settings.api_url, settings.api_key, settings.secret, settings.proxy_hops) == (
        "http://api:3000",
        "k1",
        b"s",
        1,
    )
