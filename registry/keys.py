"""The review gate's signing keys: Ed25519, key ids, rotation.

The gate signs an approval with its **private** key (``MODELYARD_GATE_KEY``: an Ed25519
key, 64 hex digits, which only the gate holds); everyone else (the deploy workflow,
``registry verify``, ``build``, reconcile) checks it with the **public** key
(``MODELYARD_GATE_PUBLIC_KEY``), which cannot sign: a workflow that can verify an
approval cannot make one. ``modelyard registry keygen`` makes a pair.

A signature is ``ed25519:<key id>:<base64 signature of the record>``; the key id is 16
hex digits of a hash of the public key, so it names the key. A rotation: the gate runs
with the new private key and the old **public** key in ``MODELYARD_GATE_PREVIOUS_KEYS``
(comma-separated), so do the verifiers; ``resign`` re-signs every stored approval (each
verified first, one audit entry each); then the old key is dropped.

Approvals signed before Ed25519 (``<key id>:<HMAC>`` or a bare HMAC, made with the
``MODELYARD_GATE_KEY`` text as a shared secret) verify only at the gate, with that text
(when it is still the gate's key) or ``MODELYARD_GATE_LEGACY_HMAC_KEYS``, so the gate
neither reverts them nor loses them while ``registry resign`` moves them to Ed25519; the
deploy side never accepts them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.errors import ConfigError
from core.tagkeys import ApprovalTag

if TYPE_CHECKING:
    from core.settings import Settings
    from registry.client import Registry
    from registry.store import GateStore


log = logging.getLogger(__name__)

# Where a signed approval lives on the production version (registry.approval).
RECORD_TAG = ApprovalTag.RECORD  # the signed fields, canonical JSON
SIGNATURE_TAG = ApprovalTag.SIGNATURE

SCHEME = "ed25519"
KEYGEN = "make a key pair with `modelyard registry keygen`"
_KEY_ID_LABEL = b"modelyard gate key id"
_LEGACY_MIN_BYTES = 16
ROTATE = (
    "If the gate's key was rotated, give the old public key in MODELYARD_GATE_PREVIOUS_KEYS "
    "(to the gate and to whatever verifies) until `modelyard registry resign --team "
    "team.yaml` has re-signed every approval; otherwise have the version approved again"
)
LEGACY = (
    "it is signed with the gate's old shared HMAC key, which only the gate accepts: run "
    "`modelyard registry resign --team team.yaml` as the gate (with that key as "
    "MODELYARD_GATE_KEY or in MODELYARD_GATE_LEGACY_HMAC_KEYS) to move it to Ed25519"
)


def _raw(text: str, what: str) -> bytes:
    """32 bytes from 64 hex digits (an Ed25519 private seed or public key)."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{what} is not an Ed25519 key (64 hex digits): {KEYGEN}")
    return raw


def _public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: bytes) -> str:
    """The name of a public key (raw 32 bytes): 16 hex digits."""
    return hashlib.sha256(_KEY_ID_LABEL + bytes(public)).hexdigest()[:16]


def _legacy_key_id(secret: bytes) -> str:
    # How the HMAC gate named its key (an HMAC of a fixed label), to read old signatures.
    return hmac.new(secret, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def _legacy_mac(secret: bytes, record: str) -> str:
    return base64.b64encode(hmac.new(secret, record.encode(), hashlib.sha256).digest()).decode()


@dataclass(frozen=True, repr=False)
class Verifier:
    """The gate's current public key and the previous ones that still verify: all the
    deploy side needs, and nothing that can sign."""

    current: bytes  # raw public key
    previous: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, current: bytes, previous: Iterable[bytes] = ()) -> Verifier:
        previous = list(previous)
        for raw in (current, *previous):
            if len(raw) != 32:
                raise ConfigError(f"a gate public key is 32 bytes, not {len(raw)}: {KEYGEN}")
        old = {key_id(k): bytes(k) for k in previous if bytes(k) != bytes(current)}
        return cls(bytes(current), MappingProxyType(old))

    @property
    def key_id(self) -> str:
        return key_id(self.current)

    @property
    def public_hex(self) -> str:
        return self.current.hex()

    def __repr__(self) -> str:
        return f"Verifier(current={self.key_id}, previous={sorted(self.previous)})"


class Signer:
    """The gate's private key (never printed) with its Verifier, and the HMAC secrets of
    approvals made before Ed25519, which only the gate may accept (to re-sign them)."""

    def __init__(
        self, private: bytes, previous: Iterable[bytes] = (), legacy: Iterable[bytes] = ()
    ) -> None:
        self._private = Ed25519PrivateKey.from_private_bytes(bytes(private))
        self.verifier = Verifier.of(_public_bytes(self._private.public_key()), previous)
        secrets = [bytes(s) for s in legacy if len(s) >= _LEGACY_MIN_BYTES]
        self.legacy: Mapping[str, bytes] = MappingProxyType({_legacy_key_id(s): s for s in secrets})

    @classmethod
    def of_hex(
        cls, private: str, previous: Iterable[str] = (), legacy: Iterable[str] = ()
    ) -> Signer:
        return cls(
            _raw(private, "MODELYARD_GATE_KEY"),
            [_raw(p, "a key of MODELYARD_GATE_PREVIOUS_KEYS") for p in previous],
            [s.encode() for s in legacy],
        )

    @property
    def key_id(self) -> str:
        return self.verifier.key_id

    def sign(self, record: str) -> str:
        signature = base64.b64encode(self._private.sign(record.encode())).decode()
        return f"{SCHEME}:{self.key_id}:{signature}"

    def __repr__(self) -> str:  # never print a key
        return f"Signer(key={self.key_id}, legacy={len(self.legacy)})"


Key = Signer | Verifier


def verifier(key: Key) -> Verifier:
    return key.verifier if isinstance(key, Signer) else key


def _split(text: str | None) -> list[str]:
    return [k.strip() for k in (text or "").replace("\n", ",").split(",") if k.strip()]


def from_settings(env: Settings) -> Signer | None:
    """The gate's signer from MODELYARD_GATE_KEY (+ previous public keys, + the legacy HMAC
    secrets: the key text itself and MODELYARD_GATE_LEGACY_HMAC_KEYS). None: no key set."""
    if env.gate_key is None:
        return None
    text = env.gate_key.get_secret_value()
    legacy = _split(
        env.gate_legacy_hmac_keys.get_secret_value() if env.gate_legacy_hmac_keys else ""
    )
    return Signer.of_hex(text, _split(env.gate_previous_keys), [text.strip(), *legacy])


def verifier_from_settings(env: Settings) -> Verifier | None:
    """What checks approvals: MODELYARD_GATE_PUBLIC_KEY (or, where the private key is set,
    its public key) and MODELYARD_GATE_PREVIOUS_KEYS. None: neither key is set."""
    previous = [
        _raw(p, "a key of MODELYARD_GATE_PREVIOUS_KEYS") for p in _split(env.gate_previous_keys)
    ]
    if env.gate_public_key:
        public = Verifier.of(_raw(env.gate_public_key, "MODELYARD_GATE_PUBLIC_KEY"), previous)
        signer = from_settings(env)
        if signer is not None and signer.key_id != public.key_id:
            raise ConfigError(
                "MODELYARD_GATE_PUBLIC_KEY is not the public key of MODELYARD_GATE_KEY: set one"
            )
        return public
    signer = from_settings(env)
    return signer.verifier if signer else None


def keygen() -> tuple[str, str]:
    """A new pair: (private key hex, the gate's secret; public key hex)."""
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return seed.hex(), _public_bytes(private.public_key()).hex()


def sign(key: Key, record: str) -> str:
    """``ed25519:<key id>:<signature>`` of ``record``: only with the private key."""
    if not isinstance(key, Signer):
        raise ConfigError(
            "this process holds only the gate's public key: it can verify approvals, not sign"
        )
    return key.sign(record)


@dataclass(frozen=True)
class Check:
    """What a signature is: valid or not, by which key, and why not."""

    ok: bool
    key_id: str | None  # the key that verified it (or the unknown one it names)
    current: bool = False  # signed with the current key, in today's format
    reason: str = ""  # why it is not valid, and what to do
    known: bool = True  # False: it names a key this gate does not have


def check(key: Key, record: str, signature: str) -> Check:
    """Verify ``signature`` of ``record`` with the current or a previous public key (and,
    at the gate only, an approval made before Ed25519 with a legacy HMAC secret)."""
    keys = verifier(key)
    scheme, _, rest = signature.partition(":")
    if scheme != SCHEME:
        return _check_legacy(key, record, signature)
    kid, sep, encoded = rest.partition(":")
    known = {keys.key_id: keys.current, **keys.previous}
    if not sep or kid not in known:
        return Check(
            False,
            kid or None,
            known=False,
            reason=(
                f"it is signed with key {kid or '?'}, which this gate does not have (current "
                f"key {keys.key_id}; previous: {', '.join(sorted(keys.previous)) or 'none'}). "
                f"{ROTATE}"
            ),
        )
    try:
        raw = base64.b64decode(encoded, validate=True)
        Ed25519PublicKey.from_public_bytes(known[kid]).verify(raw, record.encode())
    except (InvalidSignature, binascii.Error, ValueError):
        return Check(False, kid, reason=f"the signature does not match the record (key {kid})")
    return Check(True, kid, current=kid == keys.key_id)


def _check_legacy(key: Key, record: str, signature: str) -> Check:
    """An HMAC signature from before Ed25519: valid at the gate with a legacy secret it
    holds, never on the deploy side."""
    secrets = key.legacy if isinstance(key, Signer) else {}
    kid, sep, mac = signature.partition(":")
    candidates = {kid: secrets[kid]} if sep and kid in secrets else ({} if sep else secrets)
    for found, secret in candidates.items():
        if hmac.compare_digest(_legacy_mac(secret, record), mac if sep else signature):
            return Check(True, found, current=False)
    if not secrets:
        return Check(False, kid if sep else None, known=False, reason=LEGACY)
    return Check(False, kid if sep else None, reason="the signature matches no key of this gate")


# -- rotation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resigned:
    """What ``resign`` did, per production version with a stored approval."""

    resigned: list[tuple[str, str]] = field(default_factory=list)  # (version, old key id)
    current: list[str] = field(default_factory=list)  # already signed with the current key
    refused: list[tuple[str, str]] = field(default_factory=list)  # (version, why)


def resign(
    registry: Registry, store: GateStore, key: Signer, production: str, *, actor: str
) -> Resigned:
    """Re-sign every stored approval of ``production``'s versions with the current key.

    Each is verified first (with the key that signed it, current or previous): one that
    does not verify is never re-signed, only reported. A re-signed approval is added to the
    gate's table (the latest counts) and written on the version, then audited
    (``approval-resigned``). Idempotent: an approval signed with the current key, on the
    version too, is left alone.
    """
    from registry.store import StoredApproval

    keys = key
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
