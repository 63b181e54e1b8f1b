"""Web app benchmark: page load, draw-to-prediction round trip, and the web app's own
overhead on a prediction compared with calling the model API directly. All on loopback.

    python benchmarks/webapp.py [--params params.yaml] [--model NAME/VERSION]
                                [--rounds 30] [--requests 300] [--no-screenshots]

Starts `modelyard serve` (the registered model, as `make run` leaves it) and `modelyard
webapp` in front of it on free ports, then measures, bounded in count:

1. page load: headless chromium (Playwright, Debian's binary) opens "/" in a fresh
   context each round (nothing cached: HTML, CSS, JS), until the `load` event;
2. draw-to-prediction: a "7" drawn with mouse events, then the time from clicking
   Predict to the answer on the page (form post, drawing -> 8x8, API call, new page);
3. overhead: the same prediction as POST /predict to the web app and as POST /v1/predict
   to the API (httpx, keep-alive, interleaved), and GET / (the HTML alone).

Writes benchmarks/results/webapp.{md,json} and, unless --no-screenshots, the README's
screenshots (desktop, phone, the model card, an API-down page) beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent
KEY = "bench-key"
SEVEN = [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]
DESKTOP = {"width": 1200, "height": 900}
PHONE = {"width": 390, "height": 844}
CHROMIUM = os.environ.get("MODELYARD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], env: dict[str, str], probe: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{' '.join(cmd[:3])} exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(probe, timeout=2).status_code == 200:
                return proc
        time.sleep(0.3)
    sys.exit(f"{' '.join(cmd[:3])} not ready:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        parent = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        return
    procs = [parent, *parent.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        p.kill()


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] * 1000,
    }


def draw(page: Any, points: list[tuple[float, float]]) -> None:
    box = page.locator("#pad").bounding_box()
    x0, y0, size = box["x"], box["y"], box["width"]
    page.mouse.move(x0 + size * points[0][0], y0 + size * points[0][1])
    page.mouse.down()
    for fx, fy in points[1:]:
        page.mouse.move(x0 + size * fx, y0 + size * fy, steps=12)
    page.mouse.up()


def browser_rounds(web: str, rounds: int, shots: Path | None) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        loads = []
        for _ in range(rounds + 2):
            context = browser.new_context(viewport=DESKTOP)
            page = context.new_page()
            started = time.perf_counter()
            page.goto(web, wait_until="load")
            loads.append(time.perf_counter() - started)
            context.close()
        out["page_load"] = summary(loads[2:])  # the first two warm up the servers
        context = browser.new_context(viewport=DESKTOP)
        page = context.new_page()
        page.goto(web)
        trips = []
        for i in range(rounds + 2):
            draw(page, SEVEN)
            started = time.perf_counter()
            page.click("#predict")
            page.wait_for_selector("#result")
            trips.append(time.perf_counter() - started)
            if i == 0:
                out["answer"] = page.inner_text("#predicted")
        out["draw_to_prediction"] = summary(trips[2:])
        if shots is not None:
            page.screenshot(path=str(shots / "webapp-desktop.png"), full_page=True)
            page.goto(web + "/model")
            page.screenshot(path=str(shots / "webapp-model.png"), full_page=True)
            phone = browser.new_context(viewport=PHONE, device_scale_factor=2).new_page()
            phone.goto(web)
            draw(phone, SEVEN)
            phone.click("#predict")
            phone.wait_for_selector("#result")
            phone.screenshot(path=str(shots / "webapp-phone.png"), full_page=True)
        context.close()
        browser.close()
    return out


def api_down_screenshot(web: str, api_proc: subprocess.Popen[bytes], path: Path) -> None:
    """Stop the API, then predict from a phone: the page the user gets."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport=PHONE, device_scale_factor=2).new_page()
        page.goto(web)
        stop(api_proc)
        draw(page, SEVEN)
        page.click("#predict")
        page.wait_for_selector("#error-message")
        page.screenshot(path=str(path))
        browser.close()


def http_rounds(web: str, api: str, requests: int) -> dict[str, Any]:
    from services.webapp.inputs import Image, rasterize

    strokes = [[(x * 280, y * 280) for x, y in SEVEN]]
    row = rasterize(strokes, Image(8, 16.0))
    direct_body = json.dumps({"inputs": [row]})
    with httpx.Client(timeout=10) as browserish, httpx.Client(timeout=10) as service:
        page = browserish.get(web + "/")
        match = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        if not match:
            sys.exit("no CSRF token on the page: is the web app serving an image model?")
        form = {"csrf": match[1], "strokes": json.dumps(strokes)}
        timed: dict[str, list[float]] = {"via_webapp": [], "direct": [], "page_html": []}
        calls: dict[str, Callable[[], httpx.Response]] = {
            "via_webapp": lambda: browserish.post(web + "/predict", data=form),
            "direct": lambda: service.post(
                api + "/v1/predict",
                content=direct_body,
                headers={"X-API-Key": KEY, "Content-Type": "application/json"},
            ),
            "page_html": lambda: browserish.get(web + "/"),
        }
        for i in range(requests + 10):
            for name, call in calls.items():  # interleaved: drift hits all three alike
                started = time.perf_counter()
                response = call()
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    sys.exit(f"{name}: HTTP {response.status_code}: {response.text[:300]}")
                if i >= 10:
                    timed[name].append(elapsed)
    out = {name: summary(samples) for name, samples in timed.items()}
    out["overhead_p50_ms"] = out["via_webapp"]["p50_ms"] - out["direct"]["p50_ms"]
    return out


def table(result: dict[str, Any]) -> str:
    b, h = result["browser"], result["http"]
    rows = [
        ("page load: fresh browser context, HTML + CSS + JS, to `load`", b["page_load"]),
        ("draw-to-prediction: click Predict -> answer on the page", b["draw_to_prediction"]),
        ("GET / (the HTML alone)", h["page_html"]),
        (
            "prediction via the web app: POST /predict (form, drawing -> 8x8, API call, page)",
            h["via_webapp"],
        ),
        ("prediction direct: POST /v1/predict (the same row)", h["direct"]),
    ]
    lines = [
        f"Web app benchmark, {result['date']}, {result['cpu']}, all on 127.0.0.1; "
        f"model {result['model']}; chromium {result['chromium']}.",
        "",
        "| what | n | p50 ms | p95 ms |",
        "|---|---|---|---|",
        *(f"| {name} | {s['n']} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} |" for name, s in rows),
        "",
        f"The web app's own overhead on a prediction (p50 via the web app - p50 direct): "
        f"**{h['overhead_p50_ms']:.1f} ms**.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--model", default=None, help="NAME/VERSION or NAME@ALIAS")
    parser.add_argument("--rounds", type=int, default=30, help="browser rounds per measure")
    parser.add_argument("--requests", type=int, default=300, help="HTTP requests per measure")
    parser.add_argument("--no-screenshots", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-webapp-") as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env.update(
            BENTOML_HOME=str(work / "bentoml"),
            MODELYARD_API_KEYS=KEY,
            MODELYARD_LOG_DIR=str(work / "log"),
            MODELYARD_API_KEY=KEY,
            MODELYARD_WEBAPP_SECRET="bench",
            MODELYARD_WEBAPP_RATE="1000000",
            MODELYARD_WEBAPP_BURST="100000",
        )
        api_port, web_port = free_port(), free_port()
        api, web = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{web_port}"
        serve = [
            str(BIN / "modelyard"),
            "serve",
            "--params",
            str(args.params),
            "--port",
            str(api_port),
        ]
        if args.model:
            serve += ["--model", args.model]
        api_proc = start(serve, env, api + "/readyz", work / "api.out")
        web_proc = start(
            [str(BIN / "modelyard"), "webapp", "--api", api, "--port", str(web_port)],
            env,
            web + "/readyz",
            work / "web.out",
        )
        try:
            meta = httpx.get(api + "/v1/metadata", headers={"X-API-Key": KEY}).json()
            shots = None if args.no_screenshots else RESULTS
            browser = browser_rounds(web, args.rounds, shots)
            http = http_rounds(web, api, args.requests)
            if shots is not None:
                api_down_screenshot(web, api_proc, shots / "webapp-api-down.png")
        finally:
            stop(web_proc)
            stop(api_proc)
    chromium = subprocess.run(
        [CHROMIUM, "--version"], capture_output=True, text=True
    ).stdout.split()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "model": f"{meta['name']}/{meta['version']}",
        "chromium": chromium[1] if len(chromium) > 1 else "?",
        "answer_to_the_drawn_7": browser.get("answer"),
        "browser": browser,
        "http": http,
    }
    (RESULTS / "webapp.json").write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    (RESULTS / "webapp.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
