"""`modelyard keys` as a user types it (in process): create prints the key once and the
file keeps only its sha256, list shows it, revoke marks it; every mistake is a 2 that says
what to fix. The service's side: tests/services/test_gateway.py and test_http.py."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from modelyard.app import app
from tests.conftest import record_exit


def keys(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["keys", *args], env={"COLUMNS": "200"})
    record_exit(["keys", *args], result.exit_code)
    return result.exit_code, result.stdout, result.stderr


def test_keys_create_list_revoke_through_the_cli(tmp_path: Path) -> None:
    file = tmp_path / "api-keys.json"
    code, out, err = keys(
        "create", "partner", "--scope", "predict", "--rate", "5/s", "--quota", "100/day",
        "--file", str(file),
    )  # fmt: skip
    assert code == 0, err
    secret = out.strip()
    assert secret.startswith("myk_") and secret not in file.read_text()
    assert "scopes predict; rate 5/s (burst 5), quota 100/day" in " ".join(err.split())
    code, out, _ = keys("list", "--file", str(file))
    assert code == 0 and "partner" in out and secret[:8] in out and secret not in out
    code, _, err = keys("revoke", "partner", "--file", str(file))
    assert code == 0 and "revoked partner" in err
    assert json.loads(file.read_text())["keys"][0]["revoked"]
    code, out, err = keys("list", "--file", str(file))
    assert code == 0 and "partner" not in out and "1 revoked key(s) not shown" in err


def test_keys_mistakes_are_2_and_say_what_to_fix(tmp_path: Path) -> None:
    file = tmp_path / "api-keys.json"
    assert keys("create", "ok", "--file", str(file))[0] == 0
    for args, said in [
        (("create", "ok"), "exists; revoke it first"),
        (("create", "other", "--scope", "admin"), "choose from predict, feedback, metadata"),
        (("create", "other", "--rate", "9/fortnight"), "for example 50/s"),
        (("revoke", "nobody"), "no live key named 'nobody'"),
    ]:
        code, _, err = keys(*args, "--file", str(file))
        assert code == 2 and said in " ".join(err.split()), args
    code, _, err = keys("list", "--file", str(tmp_path / "none.json"))
    assert code == 2 and "create one with `modelyard keys create" in " ".join(err.split())
