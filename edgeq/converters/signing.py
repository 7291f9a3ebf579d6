"""Publisher-side ed25519: key pairs on disk and signing canonical manifest bytes (the device only verifies).

The signature file format (``{"algorithm", "key_id", "signature"}``) is defined with its verifier in
``edgeq.sdk.bundle.signing``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeq._fs import atomic_write_bytes, os_error_to_edgeq
from edgeq.errors import ConfigError, OutputExistsError
from edgeq.sdk.bundle.signing import ALGORITHM, key_id, public_key_pem


def load_private_key(source: str | os.PathLike[str] | Ed25519PrivateKey) -> Ed25519PrivateKey:
    """A private key from a key object or a PKCS#8 PEM file written by :func:`generate_keypair`."""
    if isinstance(source, Ed25519PrivateKey):
        return source
    path = Path(source)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read private key {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an ed25519 private key")
    return key


@dataclass(frozen=True)
class KeyPair:
    """Paths of a generated key pair and the public key's id."""

    private_path: Path
    public_path: Path
    key_id: str


def generate_keypair(out_dir: str | os.PathLike[str], name: str = "edgeq", *, overwrite: bool = False) -> KeyPair:
    """Generate an ed25519 key pair as ``<out_dir>/<name>.key`` (mode 0600) and ``<name>.pub``.

    The private key file is created with mode 0600 from the first byte (never chmod-ed after the
    fact) and is refused if it already exists unless ``overwrite``.
    """
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"invalid key name {name!r}")
    out = Path(out_dir)
    priv_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    if not overwrite:
        for p in (priv_path, pub_path):
            if p.exists():
                raise OutputExistsError(f"key file already exists: {p}", hint="choose another --name or --out")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{name}.key.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, priv_path)
    except OSError as exc:
        raise os_error_to_edgeq(exc, priv_path) from exc
    atomic_write_bytes(pub_path, public_key_pem(key.public_key()))
    return KeyPair(priv_path, pub_path, key_id(key.public_key()))


def sign(data: bytes, private_key: str | os.PathLike[str] | Ed25519PrivateKey) -> bytes:
    """The ``manifest.sig`` bytes for ``data`` (the canonical manifest bytes)."""
    key = load_private_key(private_key)
    doc = {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()), "signature": key.sign(data).hex()}
    return (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode("utf-8")
