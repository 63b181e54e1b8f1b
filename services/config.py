"""The model service's settings: every environment variable it reads, read once, typed and
checked (the Bento ships without ``core/``, so this is the service's own
``core.settings``). An empty variable counts as unset, except ``MODELYARD_API_KEYS``,
where set-but-empty is a mistake to refuse (services/service.py). A bad value is a
``SettingError`` naming the variable and what to set; the service refuses to start
with it.

Only the stdlib: this module ships in the Bento.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from services.gateway import DEFAULT_MAX_INFLIGHT
from services.ids import MIN_KEY_CHARS as MIN_ID_KEY_CHARS
from services.schema import MAX_BODY_BYTES

T = TypeVar("T", int, float)

TRAFFIC_TIMEOUT_SECONDS = 10  # BentoML answers 504 to a request still running after this


class SettingError(ValueError):
    """A variable the service cannot run with; the message says which and what to set."""


@dataclass(frozen=True)
class ServiceSettings:
    log_dir: Path = Path("inference-log")  # MODELYARD_LOG_DIR
    log_fsync_seconds: float = 1.0  # MODELYARD_LOG_FSYNC_SECONDS
    log_retain_bytes: int = 1 << 30  # MODELYARD_LOG_RETAIN_BYTES, per folder
    log_retain_days: float = 30.0  # MODELYARD_LOG_RETAIN_DAYS, harvested files only
    header_timeout_seconds: float = 10.0  # MODELYARD_HEADER_TIMEOUT_SECONDS
    body_timeout_seconds: float = 8.0  # MODELYARD_BODY_TIMEOUT_SECONDS, < the traffic timeout
    max_body_bytes: int = MAX_BODY_BYTES  # MODELYARD_MAX_BODY_BYTES
    ort_threads: int = 1  # MODELYARD_ORT_THREADS
    shadow: bool = True  # MODELYARD_SHADOW: on | off
    shadow_queue: int = 1024  # MODELYARD_SHADOW_QUEUE, requests
    max_inflight: int = DEFAULT_MAX_INFLIGHT  # MODELYARD_MAX_INFLIGHT, per worker; 0: none
    id_key: bytes | None = None  # MODELYARD_ID_KEY, >= 16 characters
    api_keys: str | None = None  # MODELYARD_API_KEYS, raw: None unset, "" set but empty
    api_key_file: Path | None = None  # MODELYARD_API_KEY_FILE

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServiceSettings:
        def get(name: str) -> str | None:
            value = environ.get(name, "").strip()
            return value or None

        def number(name: str, kind: Callable[[str], T], default: T, *, low: T) -> T:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise SettingError(
                    f"{name}={raw!r}: not a{'n integer' if kind is int else ' number'}"
                ) from None
            if value < low:
                raise SettingError(f"{name}={raw!r}: use {low} or more")
            return value

        body_timeout = number("MODELYARD_BODY_TIMEOUT_SECONDS", float, 8.0, low=0.0)
        if not 0 < body_timeout < TRAFFIC_TIMEOUT_SECONDS:
            raise SettingError(
                f"MODELYARD_BODY_TIMEOUT_SECONDS={body_timeout:g}: must be above 0 and below "
                f"the service's own {TRAFFIC_TIMEOUT_SECONDS} s request timeout, so a slow body "
                "is the client's 408, not the server's 504"
            )
        switch = (get("MODELYARD_SHADOW") or "on").lower()
        if switch not in ("on", "off"):
            raise SettingError(f"MODELYARD_SHADOW is {switch!r}: set it to on or off")
        raw_queue = get("MODELYARD_SHADOW_QUEUE")
        if raw_queue is not None and raw_queue.lstrip("-").isdigit() and int(raw_queue) < 1:
            raise SettingError(f"MODELYARD_SHADOW_QUEUE is {raw_queue}: set it to 1 or more")
        raw_inflight = get("MODELYARD_MAX_INFLIGHT")
        if raw_inflight is not None and not raw_inflight.isdigit():
            raise SettingError(
                f"MODELYARD_MAX_INFLIGHT is {raw_inflight!r}: use 0 (no bound) or a count"
            )
        id_key = get("MODELYARD_ID_KEY")
        if id_key is not None and len(id_key) < MIN_ID_KEY_CHARS:
            raise SettingError(
                f"MODELYARD_ID_KEY holds {len(id_key)} characters: use at least "
                f"{MIN_ID_KEY_CHARS} (`openssl rand -hex 32`), the same on every replica"
            )
        key_file = get("MODELYARD_API_KEY_FILE")
        return cls(
            log_dir=Path(get("MODELYARD_LOG_DIR") or "inference-log"),
            log_fsync_seconds=number("MODELYARD_LOG_FSYNC_SECONDS", float, 1.0, low=0.01),
            log_retain_bytes=number("MODELYARD_LOG_RETAIN_BYTES", int, 1 << 30, low=1),
            log_retain_days=number("MODELYARD_LOG_RETAIN_DAYS", float, 30.0, low=0.0),
            header_timeout_seconds=number("MODELYARD_HEADER_TIMEOUT_SECONDS", float, 10.0, low=0.1),
            body_timeout_seconds=body_timeout,
            max_body_bytes=number("MODELYARD_MAX_BODY_BYTES", int, MAX_BODY_BYTES, low=1),
            ort_threads=number("MODELYARD_ORT_THREADS", int, 1, low=1),
            shadow=switch == "on",
            shadow_queue=number("MODELYARD_SHADOW_QUEUE", int, 1024, low=1),
            max_inflight=int(raw_inflight) if raw_inflight is not None else DEFAULT_MAX_INFLIGHT,
            id_key=id_key.encode() if id_key else None,
            # Not stripped to None: set but empty is refused by the service, unset is open.
            api_keys=environ.get("MODELYARD_API_KEYS"),
            api_key_file=Path(key_file) if key_file else None,
        )
