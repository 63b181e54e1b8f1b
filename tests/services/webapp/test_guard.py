"""services.webapp.guard: CSRF tokens, signed ids, the per-client rate limit."""

from __future__ import annotations

import pytest

from services.webapp import guard

SECRET = b"s3cret"


def test_a_form_token_matches_only_its_own_cookie_and_secret() -> None:
    cookie = guard.new_csrf_cookie()
    token = guard.sign(SECRET, cookie)
    assert guard.csrf_ok(SECRET, cookie, token, None)
    assert guard.csrf_ok(SECRET, cookie, token, "same-origin")
    assert not guard.csrf_ok(SECRET, cookie, token, "cross-site")
    assert not guard.csrf_ok(SECRET, guard.new_csrf_cookie(), token, None)  # another browser
    assert not guard.csrf_ok(b"other", cookie, token, None)  # another deployment
    assert not guard.csrf_ok(SECRET, None, token, None)
    assert not guard.csrf_ok(SECRET, cookie, None, None)
    assert not guard.csrf_ok(SECRET, cookie, cookie, None)  # the cookie itself is no token


def test_signed_ids() -> None:
    assert guard.signed_ok(SECRET, "abc-0", guard.sign(SECRET, "abc-0"))
    assert not guard.signed_ok(SECRET, "abc-1", guard.sign(SECRET, "abc-0"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_limit_allows_a_burst_then_the_rate_per_client() -> None:
    clock = Clock()
    limiter = guard.RateLimiter(per_minute=60, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a") == pytest.approx(1.0)  # one token a second
    assert limiter.take("b") == 0  # another client has its own bucket
    clock.now += 0.5
    assert limiter.take("a") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.take("a") == 0
    clock.now += 3600
    assert [limiter.take("a") for _ in range(4)][-1] > 0  # refills to the burst, no further


def test_the_rate_limiter_forgets_the_least_recent_clients_first() -> None:
    limiter = guard.RateLimiter(per_minute=1, burst=1, max_clients=2, clock=Clock())
    assert limiter.take("a") == 0 and limiter.take("b") == 0
    assert limiter.take("a") > 0  # a is now the most recent
    assert limiter.take("c") == 0  # b forgotten
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0  # starts afresh


@pytest.mark.parametrize(
    ("hops", "forwarded", "expected"),
    [
        (0, "6.6.6.6", "10.0.0.9"),  # no proxy trusted: the header is the client's lie
        (1, "6.6.6.6, 203.0.113.7", "203.0.113.7"),  # the Ingress appended what it saw
        (2, "6.6.6.6, 203.0.113.7, 10.1.1.1", "203.0.113.7"),
        (1, "", "10.0.0.9"),
    ],
)
def test_the_client_is_the_address_the_trusted_proxy_saw(
    hops: int, forwarded: str, expected: str
) -> None:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    scope = {"type": "http", "client": ("10.0.0.9", 5555), "headers": headers}
    assert guard.client_key(scope, hops) == expected
