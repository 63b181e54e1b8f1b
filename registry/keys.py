"""The review gate's signing keys: which key signed an approval, and rotating keys.

An approval's signature is ``<key id>:<base64 HMAC-SHA256 of the record>``. The key id
is derived from the key (an HMAC of a fixed label, 16 hex digits), so it names a key
without revealing it and there is nothing to manage but the keys themselves:
``MODELYARD_GATE_KEY`` signs, ``MODELYARD_GATE_PREVIOUS_KEYS`` (comma-separated) only
verify. A rotation: the gate runs with the new key and the old one as previous, every
stored approval is re-signed with the new key (``resign``: verified with its old key
first, one audit entry each), then the old key is dropped. A signature whose key id is
none of these is refused with what to do; a signature without a key id (made before key
ids existed) verifies with any known key, and ``resign`` gives it one.

A ``Keyring`` is ``bytes`` (the current key) carrying the previous keys, so code that
holds "the gate's key" holds the whole ring without changing its types.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from core.errors import ConfigError

if TYPE_CHECKING:
    from core.settings import Settings
    from registry.client import Registry
    from registry.store import GateStore


log = logging.getLogger(__name__)

# Where a signed approval lives on the production version (registry.approval).
RECORD_TAG = "approval.record"  # the signed fields, canonical JSON
SIGNATURE_TAG = "approval.signature"

MIN_KEY_BYTES = 16
_KEY_ID_LABEL = b"modelyard gate key id"
ROTATE = (
    "If the gate's key was rotated, run the gate (and `registry verify`) with the old key "
    "in MODELYARD_GATE_PREVIOUS_KEYS until `modelyard registry resign --team team.yaml` "
    "has re-signed every approval; otherwise have the version approved again"
)


def key_id(key: bytes) -> str:
    """The public name of ``key``: 16 hex digits that do not reveal it."""
    return hmac.new(bytes(key), _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


class Keyring(bytes):
    """The current signing key (the bytes themselves) and the previous keys that still
    verify. A plain ``bytes`` key is a ring of one."""

    key_id: str
    previous: Mapping[str, bytes]

    def __new__(cls, current: bytes, previous: Iterable[bytes] = ()) -> Keyring:
        ring = super().__new__(cls, current)
        old = [bytes(k) for k in previous if bytes(k) != bytes(current)]
        for key in (bytes(current), *old):
            if len(key) < MIN_KEY_BYTES:
                raise ConfigError(
                    f"a gate key must be at least {MIN_KEY_BYTES} bytes: make one with "
                    "`openssl rand -hex 32`"
                )
        ring.key_id = key_id(current)
        ring.previous = MappingProxyType({key_id(k): k for k in old})
        return ring

    def __repr__(self) -> str:  # never print a key
        return f"Keyring(current={self.key_id}, previous={sorted(self.previous)})"


def ring(key: bytes) -> Keyring:
    return key if isinstance(key, Keyring) else Keyring(key)


def from_settings(env: Settings) -> Keyring | None:
    """The gate's keys from MODELYARD_GATE_KEY and MODELYARD_GATE_PREVIOUS_KEYS (None:
    no key set)."""
    if env.gate_key is None:
        return None
    old = env.gate_previous_keys.get_secret_value() if env.gate_previous_keys else ""
    previous = [k.strip().encode() for k in old.replace("\n", ",").split(",") if k.strip()]
    return Keyring(env.gate_key.get_secret_value().encode(), previous)


def _mac(key: bytes, record: str) -> str:
    return base64.b64encode(hmac.new(bytes(key), record.encode(), hashlib.sha256).digest()).decode()


def sign(key: bytes, record: str) -> str:
    """``<key id>:<HMAC>`` of ``record`` with the current key of ``key``."""
    keys = ring(key)
    return f"{keys.key_id}:{_mac(keys, record)}"


@dataclass(frozen=True)
class Check:
    """What a signature is: valid or not, by which key, and why not."""

    ok: bool
    key_id: str | None  # the key that verified it (or the unknown one it names)
    current: bool = False  # signed with the current key, in today's format
    reason: str = ""  # why it is not valid, and what to do
    known: bool = True  # False: it names a key this gate does not have


def check(key: bytes, record: str, signature: str) -> Check:
    """Verify ``signature`` of ``record`` with the current or a previous key of ``key``."""
    keys = ring(key)
    known = {keys.key_id: bytes(keys), **keys.previous}
    kid, sep, mac = signature.partition(":")
    if not sep:  # made before key ids existed: any known key may have made it
        for candidate_id, candidate in known.items():
            if hmac.compare_digest(_mac(candidate, record), signature):
                return Check(True, candidate_id, current=False)
        return Check(False, None, reason="the signature matches no key of this gate")
    if kid not in known:
        return Check(
            False,
            kid,
            known=False,
            reason=(
                f"it is signed with key {kid}, which this gate does not have (current key "
                f"{keys.key_id}; previous: {', '.join(sorted(keys.previous)) or 'none'}). "
                f"{ROTATE}"
            ),
        )
    if not hmac.compare_digest(_mac(known[kid], record), mac):
        return Check(False, kid, reason=f"the signature does not match the record (key {kid})")
    return Check(True, kid, current=kid == keys.key_id)


# -- rotation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resigned:
    """What ``resign`` did, per production version with a stored approval."""

    resigned: list[tuple[str, str]] = field(default_factory=list)  # (version, old key id)
    current: list[str] = field(default_factory=list)  # already signed with the current key
    refused: list[tuple[str, str]] = field(default_factory=list)  # (version, why)


def resign(
    registry: Registry, store: GateStore, key: bytes, production: str, *, actor: str
) -> Resigned:
    """Re-sign every stored approval of ``production``'s versions with the current key.

    Each is verified first (with the key that signed it, current or previous): one that
    does not verify is never re-signed, only reported. A re-signed approval is added to the
    gate's table (the latest counts) and written on the version, then audited
    (``approval-resigned``). Idempotent: an approval signed with the current key, on the
    version too, is left alone.
    """
    from registry.store import StoredApproval

    keys = ring(key)
    done = Resigned()
    for version in sorted(registry.versions(production), key=lambda v: int(v.version)):
        stored = store.approval_for(production, version.version)
        if stored is None:
            continue  # the gate never approved it: nothing to re-sign
        record = json.dumps(stored.record, sort_keys=True, separators=(",", ":"))
        verdict = check(keys, record, stored.signature)
        if not verdict.ok or stored.record.get("production_version") != version.version:
            why = verdict.reason or "the signed approval is for another version"
            done.refused.append((version.version, why))
            log.info("not re-signing %s v%s: %s", production, version.version, why)
            continue
        tags = version.tags
        if verdict.current and tags.get(SIGNATURE_TAG) == stored.signature:
            done.current.append(version.version)
            continue
        signature = stored.signature if verdict.current else sign(keys, record)
        if not verdict.current:
            store.add_approval(
                StoredApproval(
                    uuid.uuid4().hex, production, version.version, stored.record, signature
                )
            )
        registry.set_version_tags(
            production, version.version, {RECORD_TAG: record, SIGNATURE_TAG: signature}
        )
        store.audit(
            "approval-resigned",
            model=production,
            version=version.version,
            actor=actor,
            approval_id=stored.record.get("approval_id"),
            old_key=verdict.key_id or "none",
            new_key=keys.key_id,
        )
        done.resigned.append((version.version, verdict.key_id or "none"))
    return done
