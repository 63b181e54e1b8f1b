"""The web app in a real browser: headless Debian chromium driven by Playwright, against
`modelyard webapp` in front of a real `bentoml serve` of a registered model.

Digits (an image model): draw with mouse events and see the answer, correct it and find
the feedback in the inference log, phone size, the model card, CSV in and out. Wine (a
tabular model): the generated form. Then the API is stopped and the page says so.

Without chromium (or Playwright) these tests are skipped, with the reason; `make test`
installs chromium where it can (root on Debian/Ubuntu).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from starlette.testclient import TestClient

from services.client import Client
from services.inference_log import read
from services.webapp.app import create_app
from services.webapp.settings import Settings
from tests.services.live import (
    API_KEY,
    LiveApi,
    Proc,
    chromium,
    registered,
    serve_model,
    webapp_server,
)

pytestmark = pytest.mark.slow

DESKTOP = {"width": 1200, "height": 900}
PHONE = {"width": 390, "height": 844}
SEVEN = [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]  # a "7" in fractions of the canvas


@pytest.fixture(scope="module")
def browser(browser_tier: None) -> Iterator[Any]:
    executable = chromium()
    if executable is None:
        pytest.skip(
            "chromium is not installed: `make browser-tools` installs it (apt, as root), or "
            "set MODELYARD_CHROMIUM to a Chromium binary"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: `make setup` installs requirements.lock")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=executable,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
            ],
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def digits_web(
    server_tier: None, digits_api: LiveApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proc]:
    web = webapp_server(digits_api.url, tmp_path_factory.mktemp("digits-web"))
    web.start()
    yield web
    web.stop()


def page_at(browser: Any, url: str, viewport: dict[str, int] = DESKTOP) -> Any:
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(url)
    return page


def draw(page: Any, points: list[tuple[float, float]]) -> None:
    """One stroke with real mouse events, through ``points`` (fractions of the canvas)."""
    box = page.locator("#pad").bounding_box()
    x0, y0, size = box["x"], box["y"], box["width"]
    page.mouse.move(x0 + size * points[0][0], y0 + size * points[0][1])
    page.mouse.down()
    for fx, fy in points[1:]:
        page.mouse.move(x0 + size * fx, y0 + size * fy, steps=12)
    page.mouse.up()


def test_drawing_a_digit_shows_the_answer_with_every_class(browser: Any, digits_web: Proc) -> None:
    page = page_at(browser, digits_web.url)
    assert page.locator("#pad").is_visible()
    draw(page, SEVEN)
    page.click("#predict")
    page.wait_for_selector("#result")
    assert page.inner_text("#predicted") == "7"  # the trained CNN reads the drawn 7
    bars = page.locator(".bars tr")
    assert bars.count() == 10
    assert page.locator(".bars tr.top th").inner_text() == "7"
    assert page.inner_text("#answered-by") == "digits-classifier/1"
    assert re.fullmatch(r"\d+\.\d ms", page.inner_text("#latency"))
    # What the model saw: the 8x8 input, and the drawing is back on the canvas.
    assert page.locator(".seen rect").count() == 64
    assert page.locator("#pad").get_attribute("data-strokes")
    assert API_KEY not in page.content()
    page.context.close()


def test_correcting_an_answer_sends_feedback_to_the_inference_log(
    browser: Any, digits_web: Proc, digits_api: LiveApi
) -> None:
    page = page_at(browser, digits_web.url)
    draw(page, SEVEN)
    page.click("#predict")
    page.wait_for_selector("#result")
    prediction_id = page.locator("input[name=id]").get_attribute("value")
    page.select_option("#label", label="1")
    page.click(".feedback button")
    page.wait_for_selector("#notice")
    assert page.inner_text("#notice") == "Thanks: recorded that it is a 1."
    feedback = [r for r in read(digits_api.log_dir) if r.get("type") == "feedback"]
    assert {"id": prediction_id, "label": 1} in [
        {"id": r["id"], "label": r["label"]} for r in feedback
    ]
    page.context.close()


def test_phone_size_fits_the_screen_and_predicts(browser: Any, digits_web: Proc) -> None:
    page = page_at(browser, digits_web.url, PHONE)
    fits = "document.documentElement.scrollWidth <= window.innerWidth"
    assert page.evaluate(fits)
    box = page.locator("#pad").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    draw(page, SEVEN)
    page.click("#predict")
    page.wait_for_selector("#result")
    assert page.inner_text("#predicted") == "7"
    assert page.evaluate(fits)
    page.context.close()


def test_the_model_page_shows_the_card(browser: Any, digits_web: Proc, digits_api: LiveApi) -> None:
    with Client(digits_api.url, api_key=API_KEY) as api:
        meta = api.metadata()
    page = page_at(browser, digits_web.url + "/model")
    text = page.inner_text("main")
    assert "digits-classifier v1" in text
    assert meta.onnx_sha256 in text and meta.variant in text
    assert f"{meta.metrics['accuracy']:.4g}" in page.inner_text("#metrics")
    assert page.locator(".chip").all_inner_texts() == [str(c) for c in meta.classes]
    page.context.close()


def test_a_csv_comes_back_with_predictions(
    browser: Any, digits_web: Proc, digits_api: LiveApi, tmp_path: Path
) -> None:
    test = pd.read_parquet(digits_api.project.root / "data/prepared/test.parquet").head(5)
    upload = tmp_path / "rows.csv"
    test.rename(columns={"label": "truth"}).to_csv(upload, index=False)
    page = page_at(browser, digits_web.url)
    page.set_input_files("#file", str(upload))
    with page.expect_download() as info:
        page.click("#batch-form button")
    download = info.value
    assert download.suggested_filename == "predictions-digits-classifier-v1.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    assert len(rows) == 5
    assert {"truth", "prediction", "p_0", "p_9", "prediction_id"} <= set(rows[0])
    with Client(digits_api.url, api_key=API_KEY) as api:
        direct = api.predict(test.drop(columns="label").to_numpy(float))
    assert [r["prediction"] for r in rows] == [str(a.label) for a in direct]
    assert [r["truth"] for r in rows] == [str(v) for v in test["label"]]
    page.context.close()


def test_a_bad_csv_row_is_named_by_line_and_feature(
    browser: Any, digits_web: Proc, tmp_path: Path
) -> None:
    upload = tmp_path / "bad.csv"
    lines = [",".join(f"pixel_{i}" for i in range(64))] + [",".join(["0"] * 64)] * 3
    lines[3] = ",".join(["0"] * 5 + ["99"] + ["0"] * 58)
    upload.write_text("\n".join(lines) + "\n")
    page = page_at(browser, digits_web.url)
    page.set_input_files("#file", str(upload))
    page.click("#batch-form button")
    page.wait_for_selector("#batch-error")
    assert page.inner_text("#batch-error") == (
        "line 4, pixel_5: pixel_5 = 99 is outside the training range [0, 16]"
    )
    page.context.close()


def test_the_served_web_app_counts_its_requests(digits_web: Proc) -> None:
    import httpx

    httpx.get(digits_web.url + "/")
    httpx.get(digits_web.url + "/no-such-page")
    text = httpx.get(digits_web.url + "/metrics").text
    assert 'modelyard_webapp_requests_total{route="/",status="200"}' in text
    assert 'modelyard_webapp_requests_total{route="other",status="404"}' in text
    assert "no-such-page" not in text


def test_an_api_that_refuses_the_web_apps_key_gives_a_clear_page(digits_api: LiveApi) -> None:
    settings = Settings(api_url=digits_api.url, api_key="not-the-key", secret=b"k")
    with TestClient(create_app(settings), raise_server_exceptions=False) as web:
        response = web.get("/")
    assert response.status_code == 502
    assert "The model service refused this web app" in response.text
    assert "not-the-key" not in response.text


# -- a tabular model: the form from the feature schema; then the API goes away ------------------


@pytest.fixture(scope="module")
def wine(
    e2e_tier: None, server_tier: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveApi, Proc]]:
    base = tmp_path_factory.mktemp("wine")
    api = serve_model(registered(base / "project", "wine"), base / "api")
    # Metadata never cached: the page notices at once when the API goes away.
    web = webapp_server(api.url, base / "web", MODELYARD_WEBAPP_METADATA_TTL="0")
    web.start()
    yield api, web
    web.stop()
    api.server.stop()


def test_a_tabular_model_gets_a_form_from_its_features(
    browser: Any, wine: tuple[LiveApi, Proc]
) -> None:
    api, web = wine
    test = pd.read_parquet(api.project.root / "data/prepared/test.parquet")
    features = [c for c in test.columns if c != "cultivar"]
    row = test[features].iloc[0].tolist()
    page = page_at(browser, web.url)
    assert page.locator("#pad").count() == 0
    labels = page.locator("#feature-form label span").all_inner_texts()
    assert labels == features
    # The training ranges (from the API's /docs.json) bound each field.
    assert page.get_attribute("#f0", "max") == "200"
    assert page.get_attribute("#f12", "max") == "2000"
    for i, value in enumerate(row):
        page.fill(f"#f{i}", repr(value))
    page.click("#predict")
    page.wait_for_selector("#result")
    with Client(api.url, api_key=API_KEY) as client:
        [direct] = client.predict([row])
    assert page.inner_text("#predicted") == str(direct.label)
    assert page.locator(".bars tr").count() == 3
    assert page.input_value("#f0") == repr(row[0])  # the form keeps what was entered
    page.context.close()


def test_an_out_of_range_value_is_shown_next_to_its_field(
    browser: Any, wine: tuple[LiveApi, Proc]
) -> None:
    _, web = wine
    page = page_at(browser, web.url)
    page.eval_on_selector(
        "#feature-form", "f => f.noValidate = true"
    )  # past the browser's own check
    for i in range(13):
        page.fill(f"#f{i}", "5000" if i == 12 else "1")
    page.click("#predict")
    page.wait_for_selector("#input-error")
    assert page.inner_text("#input-error") == (
        "proline: proline = 5000 is outside the training range [0, 2000]"
    )
    assert page.locator("label.invalid span").inner_text() == "proline"
    page.context.close()


def test_when_the_api_stops_the_page_says_so(browser: Any, wine: tuple[LiveApi, Proc]) -> None:
    # Last in this module: it stops the wine API.
    api, web = wine
    page = page_at(browser, web.url)
    for i in range(13):
        page.fill(f"#f{i}", "1")
    api.server.stop()
    with page.expect_response(lambda r: r.url.endswith("/predict")) as answered:
        page.click("#predict")
    assert answered.value.status == 503
    page.wait_for_selector("#error-message")
    assert page.inner_text("h1") == "The model service is not available"
    assert "try again in a minute" in page.inner_text("#error-message")
    assert page.locator("nav a").count() == 2  # a whole page, not a blank one
    reloaded = page.goto(web.url + "/model")
    assert reloaded.status == 503
    assert page.inner_text("h1") == "The model service is not available"
    assert "Traceback" not in page.content()
    page.context.close()
