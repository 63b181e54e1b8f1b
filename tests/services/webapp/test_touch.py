"""Drawing with a finger: the Try-it canvas on a phone-size touch screen, in headless
chromium against `modelyard webapp` in front of a real `bentoml serve`.

Playwright's touchscreen only taps, so the stroke is real touch input sent through the
DevTools protocol (``Input.dispatchTouchEvent``): the browser turns it into pointer events
and, where ``touch-action`` allows, into scrolling, as on a phone. The test checks that the
finger draws (the drawn "1" reaches the model and is read as a 1) and that the page does
not scroll under it.
"""

from __future__ import annotations

import itertools
import json
from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.services.live import Proc

# The browser and the served web app are test_browser.py's module fixtures.
from tests.services.webapp.test_browser import browser, digits_web  # noqa: F401

pytestmark = pytest.mark.slow

# A small phone (360x640 CSS pixels): the Try-it page is taller than the screen, so a
# finger moving up on the canvas would scroll the page if the canvas let it.
SMALL_PHONE = {"width": 360, "height": 640}
# A "1": one vertical stroke drawn upwards (fractions of the canvas). Upwards, because a
# finger moving up scrolls a page that is at its top down; moving down could not.
ONE = [(0.5, 0.88), (0.5, 0.12)]
# How many canvas pixels carry ink.
INKED = """() => {
  const pad = document.getElementById("pad");
  const data = pad.getContext("2d").getImageData(0, 0, pad.width, pad.height).data;
  let n = 0;
  for (let i = 3; i < data.length; i += 4) { if (data[i] > 0) { n++; } }
  return n;
}"""


def touch_stroke(page: Any, points: list[tuple[float, float]], *, dx: float = 0.0) -> None:
    """One finger stroke through ``points`` (fractions of the canvas, shifted ``dx`` CSS
    pixels sideways): touchstart, touchmoves 12 per segment, touchend, as a phone sends them."""
    box = page.locator("#pad").bounding_box()
    x0, y0, size = box["x"] + dx, box["y"], box["width"]
    cdp = page.context.new_cdp_session(page)

    def send(kind: str, fx: float, fy: float) -> None:
        point = {"x": x0 + size * fx, "y": y0 + size * fy, "id": 1}
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [point]})

    send("touchStart", *points[0])
    for (ax, ay), (bx, by) in itertools.pairwise(points):
        for i in range(1, 13):
            send("touchMove", ax + (bx - ax) * i / 12, ay + (by - ay) * i / 12)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def test_a_finger_draws_a_digit_without_scrolling_the_page(
    browser: Any,  # noqa: F811
    digits_web: Proc,  # noqa: F811
) -> None:
    context = browser.new_context(viewport=SMALL_PHONE, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(digits_web.url)
    # Preconditions: a touch screen, a page the finger could scroll, the canvas on screen.
    assert page.evaluate("matchMedia('(pointer: coarse)').matches")
    assert page.evaluate("document.documentElement.scrollHeight") > SMALL_PHONE["height"]
    box = page.locator("#pad").bounding_box()
    assert box["y"] + box["height"] <= SMALL_PHONE["height"]

    touch_stroke(page, ONE)
    assert page.evaluate("window.scrollY") == 0
    assert page.evaluate(INKED) > 0, "the finger left no line on the canvas"
    # Chromium drops a tap that starts within its double-tap window (~300 ms) after a
    # drag ends, with or without draw.js; a finger takes longer to reach the button.
    page.wait_for_timeout(1_000)
    with page.expect_request(lambda r: r.method == "POST") as sent:
        page.tap("#predict")
    page.wait_for_selector("#result")

    # The whole stroke reached the server: one stroke, top to bottom of the drawing, on
    # the canvas's vertical middle line (CSS pixels of the 280-pixel canvas).
    [strokes] = parse_qs(sent.value.post_data)["strokes"]
    [stroke] = json.loads(strokes)
    xs, ys = [x for x, _ in stroke], [y for _, y in stroke]
    size = box["width"]
    assert max(abs(x - size / 2) for x in xs) <= 1
    assert max(ys) >= 0.87 * size and min(ys) <= 0.13 * size
    # ... and the model: the 8x8 input has ink in its middle columns only, read as a 1.
    seen = page.locator(".seen rect").evaluate_all(
        "rs => rs.map(r => [+r.getAttribute('x'), +r.getAttribute('fill-opacity')])"
    )
    inked = {x for x, opacity in seen if opacity > 0}
    assert inked and inked <= {2, 3, 4, 5}
    assert page.inner_text("#predicted") == "1"

    # The check can see a scroll: the same stroke beside the canvas scrolls the page.
    touch_stroke(page, ONE, dx=box["width"] / 2 + 20)
    page.wait_for_function("window.scrollY > 0")
    context.close()
