"""The API gateway's pure parts (services/gateway.py), on a clock the test moves: the key
file, scopes, token buckets, daily quotas, reloads and load shedding. Over HTTP against
`bentoml serve`: tests/services/test_http.py::test_named_keys_limits_and_shedding_over_http."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from starlette.datastructures import Headers

from services import gateway
from services.gateway import DAY, Bucket, DailyCount, Gateway, KeyFileError, Load, Rate
from services.schema import RequestError

NOON = 20_000 * DAY + DAY / 2  # a wall-clock time: noon UTC


class Clock:
    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def bearer(key: str) -> Headers:
    return Headers(raw=[(b"authorization", f"Bearer {key}".encode())])


def refusal(gate: Gateway, key: str, scope: str = "predict") -> RequestError:
    with pytest.raises(RequestError) as caught:
        gate.admit(bearer(key), scope)
    return caught.value


def counted(name: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "modelyard_api_key_requests_total", {"key": name, "outcome": outcome}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("text", "per_second", "burst"),
    [("50/s", 50.0, 50), ("3000/min", 50.0, 50), ("10/h", 10 / 3600, 1), ("2.5/sec", 2.5, 3)],
)
def test_rates_parse(text: str, per_second: float, burst: int) -> None:
    rate = Rate.parse(text)
    assert rate.per_second == pytest.approx(per_second) and rate.burst == burst


@pytest.mark.parametrize("text", ["50", "50/fortnight", "0/s", "-1/s", "fast"])
def test_a_bad_rate_says_how_to_write_one(text: str) -> None:
    with pytest.raises(KeyFileError, match="for example 50/s"):
        Rate.parse(text)


def test_quotas_parse_per_day_only() -> None:
    assert gateway.parse_quota("100000/day") == 100_000 and gateway.parse_quota("5/d") == 5
    for bad in ("100/h", "0/day", "lots"):
        with pytest.raises(KeyFileError, match="per day"):
            gateway.parse_quota(bad)


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    bucket = Bucket(Rate.parse("2/s", burst=3), now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # a token every 0.5 s
    assert bucket.take(0.25) == pytest.approx(0.25)  # a refusal spends nothing
    assert bucket.take(0.5) == 0.0
    assert bucket.take(10.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # capped at 3


def test_a_daily_quota_ends_at_the_limit_and_starts_again_at_utc_midnight() -> None:
    day = DailyCount(2)
    assert day.take(NOON) == 0.0 and day.take(NOON + 1) == 0.0
    assert day.take(NOON + 2) == pytest.approx(DAY / 2 - 2)  # seconds to midnight
    assert day.take(NOON + DAY / 2) == 0.0  # the next day


def test_the_key_file_keeps_hashes_never_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    secret, record = gateway.create_key(
        path, "mobile-app", scopes=["feedback", "predict"], rate="50/s", quota="1000/day"
    )
    text = path.read_text()
    assert secret.startswith("myk_") and len(secret) > 40
    assert secret not in text and secret[4:] not in text
    assert json.loads(text)["keys"][0]["sha256"] == gateway.digest(secret)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert record.scopes == ("predict", "feedback")  # in the one order
    assert gateway.read_keys(path) == [record]
    with pytest.raises(KeyFileError, match="exists; revoke it first"):
        gateway.create_key(path, "mobile-app", scopes=["predict"])
    gateway.revoke_key(path, "mobile-app")
    again, _ = gateway.create_key(path, "mobile-app", scopes=["predict"])  # a new key, same name
    assert again != secret and [k.revoked is None for k in gateway.read_keys(path)] == [False, True]
    with pytest.raises(KeyFileError, match="no live key named 'other'"):
        gateway.revoke_key(path, "other")


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("Mobile App", {}, "lower-case letters"),
        ("ok", {"scopes": ["predict", "admin"]}, "choose from predict, feedback, metadata"),
        ("ok", {"scopes": []}, "choose from"),
        ("ok", {"burst": 5}, "--burst needs --rate"),
        ("ok", {"quota": "10/h"}, "per day"),
    ],
)
def test_bad_key_requests_say_what_to_fix(
    tmp_path: Path, name: str, kwargs: dict[str, object], message: str
) -> None:
    options: dict[str, object] = {"scopes": ["predict"], **kwargs}
    with pytest.raises(KeyFileError, match=message):
        gateway.create_key(tmp_path / "keys.json", name, **options)  # type: ignore[arg-type]
    assert not (tmp_path / "keys.json").exists()


def test_a_damaged_key_file_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    for body, message in [
        ("{", "not a readable key file"),
        ('{"version": 9}', "not a modelyard key file"),
        ('{"version": 1, "keys": [{"name": "x"}]}', "key #1 is not valid"),
    ]:
        path.write_text(body)
        with pytest.raises(KeyFileError, match=message):
            Gateway([], path)
    with pytest.raises(KeyFileError, match="create one with `modelyard keys create"):
        Gateway([], tmp_path / "missing.json")


def test_scopes_rates_and_quotas_are_per_key(tmp_path: Path) -> None:
    path, clock = tmp_path / "keys.json", Clock()
    web, _ = gateway.create_key(path, "gw-web", scopes=["predict"], rate="1/s", burst=2)
    batch, _ = gateway.create_key(path, "gw-batch", scopes=["predict", "feedback"], quota="3/d")
    gate = Gateway([b"legacy-key"], path, clock=clock, wall=lambda: NOON)
    before = counted("gw-web", "rate")
    assert gate.admit(bearer(web), "predict") == "gw-web"
    assert gate.admit(bearer(web), "predict") == "gw-web"
    limited = refusal(gate, web)
    assert (limited.status, limited.field, limited.retry_after) == (429, "rate", 1)
    assert "limited to 1/s (burst 2)" in limited.message
    assert counted("gw-web", "rate") == before + 1
    clock.t += 1.0
    assert gate.admit(bearer(web), "predict") == "gw-web"
    denied = refusal(gate, web, "feedback")
    assert denied.status == 403 and "may not call feedback" in denied.message
    assert [gate.admit(bearer(batch), s) for s in ("predict", "feedback", "predict")] == [
        "gw-batch"
    ] * 3
    used = refusal(gate, batch)
    assert (used.status, used.field, used.retry_after) == (429, "quota", DAY // 2)
    for _ in range(50):  # MODELYARD_API_KEYS: every scope, no limit
        assert gate.admit(bearer("legacy-key"), "metadata") == "env-1"


def test_unknown_missing_and_mixed_keys_are_401(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    one, _ = gateway.create_key(path, "one", scopes=["predict"])
    two, _ = gateway.create_key(path, "two", scopes=["predict"])
    gate = Gateway([], path)
    assert refusal(gate, "myk_made-up").status == 401
    with pytest.raises(RequestError, match="missing API key"):
        gate.admit(Headers(raw=[]), "predict")
    mixed = Headers(
        raw=[(b"x-api-key", one.encode()), (b"authorization", f"Bearer {two}".encode())]
    )
    with pytest.raises(RequestError, match="two different API keys"):
        gate.admit(mixed, "predict")
    same = Headers(raw=[(b"x-api-key", one.encode()), (b"authorization", f"Bearer {one}".encode())])
    assert gate.admit(same, "predict") == "one"


def test_no_keys_at_all_is_an_open_api() -> None:
    gate = Gateway([])
    assert not gate.enabled and gate.admit(Headers(raw=[]), "predict") is None


def test_a_revoked_key_is_refused_within_a_second_without_a_restart(tmp_path: Path) -> None:
    path, clock = tmp_path / "keys.json", Clock()
    kept, _ = gateway.create_key(path, "kept", scopes=["predict"], rate="1/min", burst=1)
    gone, _ = gateway.create_key(path, "gone", scopes=["predict"])
    gate = Gateway([], path, clock=clock)
    assert gate.admit(bearer(gone), "predict") == "gone"
    assert gate.admit(bearer(kept), "predict") == "kept"  # its one token
    gateway.revoke_key(path, "gone")
    clock.t += 0.5
    assert gate.admit(bearer(gone), "predict") == "gone"  # not looked at yet
    clock.t += 0.5
    assert refusal(gate, gone).status == 401
    # The reload kept what "kept" had used: its bucket is still empty.
    assert refusal(gate, kept).status == 429
    added, _ = gateway.create_key(path, "added", scopes=["predict"])
    clock.t += 1.0
    assert gate.admit(bearer(added), "predict") == "added"


def test_a_file_that_turns_unreadable_keeps_the_keys_read_before(tmp_path: Path) -> None:
    path, clock = tmp_path / "keys.json", Clock()
    key, _ = gateway.create_key(path, "steady", scopes=["predict"])
    gate = Gateway([], path, clock=clock)
    path.write_text("{ half a file")
    clock.t += 2
    assert gate.admit(bearer(key), "predict") == "steady"
    path.unlink()
    clock.t += 2
    assert gate.admit(bearer(key), "predict") == "steady"


def test_load_sheds_past_its_bound_and_is_unready_while_it_does() -> None:
    clock = Clock()
    load = Load(2, clock=clock)
    assert load.enter() and load.enter() and load.ready() is False  # at the bound
    assert load.enter() is False and load.shed == 1
    refused = load.refusal()
    assert (refused.status, refused.retry_after) == (503, gateway.SHED_RETRY_AFTER_SECONDS)
    load.leave()
    assert load.enter() and load.in_flight == 2
    load.leave()
    load.leave()
    assert load.ready() is False  # shed a moment ago
    clock.t += gateway.UNREADY_AFTER_SHED_SECONDS
    assert load.ready() is True
    unbounded = Load(0)
    assert all(unbounded.enter() for _ in range(1000)) and unbounded.ready()
