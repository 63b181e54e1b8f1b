"""The header-read timeout on both of uvicorn's HTTP/1.1 implementations (the container
may run either: httptools is not in the Bento's requirements), and the launcher's pure
helpers. The service's own behaviour over HTTP is in test_http.py."""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from services.serve import _probe_url, _reason
from tests.conftest import REPO, free_port, kill_tree

# A bare uvicorn server with the timeout installed, in its own process (the timeout wraps
# uvicorn's protocol classes process-wide).
SERVER = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from services.edge import limit_header_time

async def ok(request):
    return PlainTextResponse("ok")

limit_header_time(float(sys.argv[3]))
app = Starlette(routes=[Route("/", ok)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http=sys.argv[2], log_level="warning")
"""
TIMEOUT = 1.0


@pytest.fixture(params=["h11", "httptools"])
def port(server_tier: None, request: pytest.FixtureRequest) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), request.param, str(TIMEOUT)], cwd=REPO
    )
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, "the server exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
            break
        assert time.monotonic() < deadline, "the server did not listen"
        time.sleep(0.1)
    yield port
    kill_tree(proc.pid)


def _trickle(sock: socket.socket, lines: int) -> int:
    """Send a header line every 0.1 s; the number sent before the server closed the
    connection (``lines`` if it never did)."""
    for sent in range(lines):
        if select.select([sock], [], [], 0.1)[0]:
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1024) == b"", "answered a request with no end of headers"
            return sent
        try:
            sock.sendall(b"X-Slow-%d: y\r\n" % sent)
        except (BrokenPipeError, ConnectionResetError):
            return sent
    return lines


LINES = int(30 * TIMEOUT / 0.1)  # a line every 0.1 s for 30 times the limit


def test_slow_headers_are_cut_off(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert _trickle(sock, LINES) < LINES


def test_slow_headers_of_a_second_request_are_cut_off_too(port: int) -> None:
    """After one answered request, the next request's headers are due in time as well
    (uvicorn's keep-alive timer is reset by every byte, so it does not do this)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"ok"):
            answer += sock.recv(1024)
        assert answer.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert _trickle(sock, LINES) < LINES


def test_a_prompt_request_is_answered(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(1024):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok")


def test_refusal_reason_is_the_services_own_words() -> None:
    lines = [
        "INFO starting\n",
        "Traceback (most recent call last):\n",
        "services.service.StartupRefused: refusing to start: model.onnx has sha256 x\n",
        "ERROR Application startup failed. Exiting.\n",
    ]
    assert _reason(lines) == "the service refused to start: model.onnx has sha256 x"
    other = _reason(["ModuleNotFoundError: No module named 'onnxruntime'\n"])
    assert other.startswith("a worker exited before the service was ready")
    assert "onnxruntime" in other


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:3000/readyz"),
        ("0.0.0.0", "http://127.0.0.1:3000/readyz"),
        ("::", "http://[::1]:3000/readyz"),
        ("::1", "http://[::1]:3000/readyz"),
        ("10.0.0.5", "http://10.0.0.5:3000/readyz"),
    ],
)
def test_readiness_is_probed_where_the_server_listens(host: str, url: str) -> None:
    assert _probe_url(host, 3000) == url
