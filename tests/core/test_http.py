"""The one outbound HTTP client against a real local server: what it retries, what it
does not, and the errors it raises."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from core import http
from core.errors import ExternalServiceError
from tests.conftest import free_port


class Script:
    """A local server that answers each request with the next scripted (status, body)."""

    def __init__(self, replies: list[tuple[int, bytes]]) -> None:
        self.replies = replies
        self.seen: list[tuple[str, str, Any]] = []
        script = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                script.seen.append((self.command, self.path, json.loads(raw) if raw else None))
                status, body = script.replies[min(len(script.seen), len(script.replies)) - 1]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def script() -> Iterator[Any]:
    made: list[Script] = []

    def make(*replies: tuple[int, bytes]) -> Script:
        made.append(Script(list(replies)))
        return made[-1]

    yield make
    for s in made:
        s.server.shutdown()


def test_json_goes_out_and_comes_back(script: Any) -> None:
    server = script((201, b'{"ok": true}'))
    status, reply = http.request_json("POST", f"{server.url}/x", {"a": 1}, what="the thing")
    assert (status, reply) == (201, {"ok": True})
    assert server.seen == [("POST", "/x", {"a": 1})]


def test_503_is_retried_until_it_passes(script: Any) -> None:
    server = script((503, b"busy"), (503, b"busy"), (200, b"[1]"))
    assert http.request_json("GET", server.url, attempts=3) == (200, [1])
    assert len(server.seen) == 3


def test_503_every_time_ends_in_an_error_naming_the_status(script: Any) -> None:
    server = script((503, b"still busy"))
    with pytest.raises(ExternalServiceError, match=r"the alert webhook refused .* HTTP 503"):
        http.request_json("POST", server.url, {}, attempts=2, what="the alert webhook")
    assert len(server.seen) == 2


def test_a_4xx_is_final_and_carries_the_server_message(script: Any) -> None:
    server = script((422, b'{"error": "label must be an integer"}'))
    with pytest.raises(ExternalServiceError, match=r"HTTP 422.*label must be an integer"):
        http.request_json("POST", server.url, {"label": "x"}, attempts=3)
    assert len(server.seen) == 1  # not retried: sending it again cannot help


def test_an_empty_reply_is_none(script: Any) -> None:
    server = script((204, b""))
    assert http.request_json("POST", server.url, {}) == (204, None)


def test_a_reply_that_is_not_json_is_an_error(script: Any) -> None:
    server = script((200, b"<html>login</html>"))
    with pytest.raises(ExternalServiceError, match="not JSON"):
        http.request_json("GET", server.url)


def test_nobody_listening_is_an_error_after_the_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}/webhook"
    with pytest.raises(ExternalServiceError, match=r"cannot reach GitHub at .* after 2 tries"):
        http.request_json("POST", url, {}, attempts=2, what="GitHub")


def test_errors_never_show_a_webhook_secret(script: Any) -> None:
    server = script((404, b"no such hook"))
    with pytest.raises(ExternalServiceError) as caught:
        http.request_json("POST", f"{server.url}/services/T000/B000/s3cr3t?token=t0k", {})
    assert "s3cr3t" not in str(caught.value) and "t0k" not in str(caught.value)
    assert server.url in str(caught.value)
    closed = f"http://127.0.0.1:{free_port()}/hooks/s3cr3t"
    with pytest.raises(ExternalServiceError) as caught:
        http.request_json("POST", closed, {}, attempts=1)
    assert "s3cr3t" not in str(caught.value)


def test_redact_keeps_scheme_host_and_port() -> None:
    assert http.redact("https://hooks.slack.com/services/T/B/x") == "https://hooks.slack.com/..."
    assert http.redact("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert http.redact("https://api.github.com") == "https://api.github.com"
