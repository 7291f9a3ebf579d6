"""ed25519 bundle signatures, the device side: public keys, key ids, and verifying canonical manifest bytes.

A key id is the SHA-256 hex of the raw 32-byte public key, so the same key has the same id whatever
file format carries it. ``manifest.sig`` is a small JSON object ``{"algorithm", "key_id", "signature"}``
(signature hex) over ``Manifest.canonical_bytes()``. Devices trust a set of public keys
(:class:`TrustedKeys`); a signature counts only if its key id is in that set and it verifies.
Key generation and signing are the publisher's: ``edgeq.converters.signing``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeq.errors import ConfigError, SignatureError

ALGORITHM = "ed25519"
#: A manifest.sig larger than this is not a signature file; refuse before parsing it.
MAX_SIGNATURE_BYTES = 4096

KeySource = str | os.PathLike[str] | bytes | Ed25519PublicKey


def raw_public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """SHA-256 hex of the raw public key: the name a signature and a trust store use for a key."""
    return hashlib.sha256(raw_public_bytes(key)).hexdigest()


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def parse_public_key(data: bytes, *, what: str = "public key") -> Ed25519PublicKey:
    """Read an ed25519 public key from PEM, 32 raw bytes or 64 hex characters."""
    stripped = data.strip()
    try:
        if stripped.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(stripped)
        elif len(data) == 32:
            key = Ed25519PublicKey.from_public_bytes(data)
        elif len(stripped) == 64:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(stripped.decode("ascii")))
        else:
            raise ValueError("not PEM, raw or hex")
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise ConfigError(f"{what} is not an ed25519 public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{what} is not an ed25519 public key ({type(key).__name__})")
    return key


def load_public_key(source: KeySource) -> Ed25519PublicKey:
    """A public key from a key object, key bytes, or a path to a ``.pub`` file."""
    if isinstance(source, Ed25519PublicKey):
        return source
    if isinstance(source, bytes):
        return parse_public_key(source)
    path = Path(source)
    try:
        return parse_public_key(path.read_bytes(), what=str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read public key {path}: {exc.strerror or exc}") from exc


class TrustedKeys:
    """The public keys a device accepts bundle signatures from, by key id."""

    def __init__(self, keys: Iterable[KeySource] = ()) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for k in keys:
            self.add(k)

    def add(self, source: KeySource) -> str:
        key = load_public_key(source)
        kid = key_id(key)
        self._keys[kid] = key
        return kid

    def ids(self) -> list[str]:
        return sorted(self._keys)

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self._keys.get(kid)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys


def verify(data: bytes, signature_file: bytes, trusted: TrustedKeys) -> str:
    """Check ``signature_file`` (manifest.sig bytes) over ``data``; return the signing key id.

    Raises SignatureError when the file is malformed, names an untrusted key, or does not verify.
    """
    if len(signature_file) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"signature file is {len(signature_file)} bytes; not a signature")
    try:
        doc = json.loads(signature_file.decode("utf-8"))
        algorithm, kid, sig_hex = doc["algorithm"], doc["key_id"], doc["signature"]
        sig = bytes.fromhex(sig_hex)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SignatureError(f"malformed signature file: {exc}") from exc
    if algorithm != ALGORITHM:
        raise SignatureError(f"unsupported signature algorithm {algorithm!r} (expected {ALGORITHM})")
    key = trusted.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise SignatureError(
            f"bundle is signed by key {str(kid)[:16]}…, which this device does not trust",
            hint="add the publisher's public key with --trust KEY.pub",
        )
    try:
        key.verify(sig, data)
    except InvalidSignature as exc:
        raise SignatureError(
            "bundle signature does not verify: the manifest was changed after signing"
        ) from exc
    return kid
