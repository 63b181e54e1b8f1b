"""The service's settings (services/config.py): every variable it reads, typed and checked
once at start; a bad value names the variable and what to set (the service then refuses
to start: tests/services/test_http.py shows that end to end for the API keys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services import gateway
from services.config import ServiceSettings, SettingError


def test_the_defaults_and_empty_variables_count_as_unset() -> None:
    settings = ServiceSettings.from_env({"MODELYARD_LOG_DIR": "", "MODELYARD_ORT_THREADS": " "})
    assert settings == ServiceSettings()
    assert settings.max_inflight == gateway.DEFAULT_MAX_INFLIGHT
    assert settings.api_keys is None and settings.id_key is None and settings.shadow is True


def test_every_variable_is_read() -> None:
    settings = ServiceSettings.from_env(
        {
            "MODELYARD_LOG_DIR": "/var/log/m",
            "MODELYARD_LOG_FSYNC_SECONDS": "0.5",
            "MODELYARD_LOG_RETAIN_BYTES": "1000",
            "MODELYARD_LOG_RETAIN_DAYS": "7",
            "MODELYARD_HEADER_TIMEOUT_SECONDS": "3",
            "MODELYARD_BODY_TIMEOUT_SECONDS": "2",
            "MODELYARD_MAX_BODY_BYTES": "4096",
            "MODELYARD_ORT_THREADS": "2",
            "MODELYARD_SHADOW": "OFF",
            "MODELYARD_SHADOW_QUEUE": "8",
            "MODELYARD_MAX_INFLIGHT": "0",
            "MODELYARD_ID_KEY": "k" * 16,
            "MODELYARD_API_KEYS": "",
            "MODELYARD_API_KEY_FILE": "/etc/keys.json",
        }
    )
    assert settings == ServiceSettings(
        log_dir=Path("/var/log/m"),
        log_fsync_seconds=0.5,
        log_retain_bytes=1000,
        log_retain_days=7.0,
        header_timeout_seconds=3.0,
        body_timeout_seconds=2.0,
        max_body_bytes=4096,
        ort_threads=2,
        shadow=False,
        shadow_queue=8,
        max_inflight=0,
        id_key=b"k" * 16,
        api_keys="",  # set but empty: the service refuses it (not "unset")
        api_key_file=Path("/etc/keys.json"),
    )


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("MODELYARD_BODY_TIMEOUT_SECONDS", "10", "below the service's own 10 s"),
        ("MODELYARD_BODY_TIMEOUT_SECONDS", "soon", "not a number"),
        ("MODELYARD_SHADOW", "maybe", "set it to on or off"),
        ("MODELYARD_SHADOW_QUEUE", "0", "set it to 1 or more"),
        ("MODELYARD_MAX_INFLIGHT", "-3", "use 0 (no bound) or a count"),
        ("MODELYARD_ID_KEY", "short", "holds 5 characters: use at least 16"),
        ("MODELYARD_ORT_THREADS", "0", "use 1 or more"),
        ("MODELYARD_LOG_RETAIN_BYTES", "1.5", "not an integer"),
        ("MODELYARD_MAX_BODY_BYTES", "-1", "use 1 or more"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_to_set(name: str, value: str, said: str) -> None:
    with pytest.raises(SettingError, match=name) as caught:
        ServiceSettings.from_env({name: value})
    assert said in str(caught.value)
