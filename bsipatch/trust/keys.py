"""Signing keys: generate, save/load (PKCS#8 PEM), key ids, sign and verify.

Two key types, both through the ``cryptography`` package:

========== ============ ==================== =========================================
kind       ``keytype``  ``scheme``           ``public`` (in the public key dict)
========== ============ ==================== =========================================
ed25519    ``ed25519``  ``ed25519``          hex of the 32-byte raw public key
ecdsa-p256 ``ecdsa``    ``ecdsa-sha2-nistp256`` hex of the 65-byte uncompressed point
========== ============ ==================== =========================================

A key id is the hex SHA-256 of the canonical JSON of the public key dict
``{"keytype", "scheme", "public"}``. Ed25519 signatures are the 64 raw bytes, ECDSA
signatures are DER over SHA-256; both are written as lowercase hex.

Key material is never printed, logged or put in an exception message: the
wrappers' ``repr`` shows only the kind and the key id. This module does not decide
trust (which keys count for which role): that is :mod:`bsipatch.trust.verify`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from bsipatch._io import atomic_write
from bsipatch.errors import FormatError, KeyFileError
from bsipatch.trust import canonical

__all__ = [
    "KINDS",
    "PrivateKey",
    "PublicKey",
    "generate",
    "keyid",
    "load_private",
    "load_public",
    "public_key_dict",
    "save_private",
    "sign",
    "sign_envelope",
    "verify",
]

#: Key kinds accepted by :func:`generate`.
KINDS = ("ed25519", "ecdsa-p256")

_SCHEMES = {"ed25519": ("ed25519", "ed25519"), "ecdsa-p256": ("ecdsa", "ecdsa-sha2-nistp256")}
_HEX = re.compile(r"^[0-9a-f]*$")

PathLike = str | os.PathLike[str]
_Private = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
_Public = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class PublicKey:
    """A public key with its canonical dict and key id.

    Attributes:
        kind: ``"ed25519"`` or ``"ecdsa-p256"``.
        keyid: hex SHA-256 of the canonical public key dict.
    """

    kind: str
    keyid: str
    _key: _Public = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, str]:
        """The public key dict ``{"keytype", "scheme", "public"}`` stored in a root."""
        keytype, scheme = _SCHEMES[self.kind]
        return {"keytype": keytype, "scheme": scheme, "public": _public_hex(self._key)}

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` is this key's valid signature over ``data``."""
        try:
            if isinstance(self._key, ed25519.Ed25519PublicKey):
                self._key.verify(signature, data)
            else:
                self._key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


class PrivateKey:
    """A private signing key. Its ``repr`` and ``str`` never show key material.

    Attributes:
        kind: ``"ed25519"`` or ``"ecdsa-p256"``.
        public: the matching :class:`PublicKey`.
    """

    __slots__ = ("_key", "kind", "public")

    def __init__(self, key: _Private) -> None:
        if isinstance(key, ed25519.Ed25519PrivateKey):
            kind = "ed25519"
        elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            kind = "ecdsa-p256"
        else:
            raise TypeError(f"unsupported private key type {type(key).__name__}")
        self._key = key
        self.kind = kind
        self.public = _make_public(kind, key.public_key())

    @property
    def keyid(self) -> str:
        """The key id of the public half."""
        return self.public.keyid

    def __repr__(self) -> str:
        return f"PrivateKey(kind={self.kind!r}, keyid={self.keyid[:16]!r}...)"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # refuse pickling: it would copy the secret around
        raise TypeError("PrivateKey cannot be pickled")


def _public_hex(key: _Public) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    return raw.hex()


def _make_public(kind: str, key: _Public) -> PublicKey:
    keytype, scheme = _SCHEMES[kind]
    pub = {"keytype": keytype, "scheme": scheme, "public": _public_hex(key)}
    return PublicKey(kind=kind, keyid=keyid(pub), _key=key)


def generate(kind: str = "ed25519") -> PrivateKey:
    """Generate a new private key.

    Args:
        kind: ``"ed25519"`` (default) or ``"ecdsa-p256"``.

    Returns:
        The new key.

    Raises:
        ValueError: unknown ``kind``.

    Example:
        >>> k = generate()
        >>> len(k.keyid)
        64
    """
    if kind == "ed25519":
        return PrivateKey(ed25519.Ed25519PrivateKey.generate())
    if kind == "ecdsa-p256":
        return PrivateKey(ec.generate_private_key(ec.SECP256R1()))
    raise ValueError(f"unknown key kind {kind!r}; expected one of {', '.join(KINDS)}")


def _passphrase_bytes(passphrase: str | bytes | None) -> bytes | None:
    if passphrase is None:
        return None
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    if not passphrase:
        raise ValueError("an empty passphrase is not allowed; pass None for no passphrase")
    return passphrase


def private_pem(key: PrivateKey, passphrase: str | bytes | None = None) -> bytes:
    """The PKCS#8 PEM of ``key``, encrypted when ``passphrase`` is given."""
    pw = _passphrase_bytes(passphrase)
    algorithm: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(pw) if pw else serialization.NoEncryption()
    )
    return key._key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algorithm
    )


def save_private(key: PrivateKey, path: PathLike, passphrase: str | bytes | None = None) -> None:
    """Write ``key`` to ``path`` as PKCS#8 PEM, atomically, with mode 0600.

    Args:
        key: the key to save.
        path: destination file (replaced if it exists).
        passphrase: encrypt the PEM with it (``BestAvailableEncryption``).

    Raises:
        ValueError: an empty passphrase.
    """
    pem = private_pem(key, passphrase)
    with atomic_write(path) as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(pem)


def load_private(path: PathLike, passphrase: str | bytes | None = None) -> PrivateKey:
    """Read a PKCS#8 (or traditional) PEM private key.

    Args:
        path: the PEM file.
        passphrase: needed when the PEM is encrypted.

    Returns:
        The key.

    Raises:
        KeyFileError: unreadable file, bad PEM, wrong or missing passphrase, or a key
            type other than Ed25519 / ECDSA P-256. The message never contains key bytes.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=_passphrase_bytes(passphrase))
    except TypeError:
        if passphrase is None:
            raise KeyFileError(f"key file {path} is encrypted: a passphrase is needed") from None
        raise KeyFileError(f"key file {path} is not encrypted but a passphrase was given") from None
    except ValueError:
        # Both "bad PEM" and "wrong passphrase" land here; do not chain (no key bytes leak).
        raise KeyFileError(
            f"cannot load private key from {path}: not a PEM private key or wrong passphrase"
        ) from None
    except Exception:  # cryptography raises a few other types for odd inputs
        raise KeyFileError(f"cannot load private key from {path}") from None
    try:
        return PrivateKey(key)  # type: ignore[arg-type]
    except TypeError:
        raise KeyFileError(
            f"key file {path} holds a {type(key).__name__}; expected Ed25519 or ECDSA P-256"
        ) from None


def public_key_dict(key: PrivateKey | PublicKey) -> dict[str, str]:
    """The public key dict ``{"keytype", "scheme", "public"}`` of a key."""
    pub = key.public if isinstance(key, PrivateKey) else key
    return pub.to_dict()


def keyid(pubdict: Mapping[str, Any]) -> str:
    """The key id: hex SHA-256 of the canonical JSON of ``{"keytype","scheme","public"}``.

    Raises:
        FormatError: the dict lacks one of the three fields.
    """
    try:
        core = {k: pubdict[k] for k in ("keytype", "scheme", "public")}
    except KeyError as exc:
        raise FormatError(f"public key dict lacks {exc.args[0]!r}") from None
    return hashlib.sha256(canonical.encode(core)).hexdigest()


def load_public(pubdict: Mapping[str, Any]) -> PublicKey:
    """Build a :class:`PublicKey` from its dict (as stored in a root).

    Raises:
        FormatError: unknown key type or scheme, extra fields, or bad key bytes.
    """
    if not isinstance(pubdict, Mapping) or set(pubdict) != {"keytype", "scheme", "public"}:
        raise FormatError("a public key must have exactly keytype, scheme and public")
    keytype, scheme, public = pubdict["keytype"], pubdict["scheme"], pubdict["public"]
    if not isinstance(public, str) or not _HEX.match(public) or len(public) % 2:
        raise FormatError("public key must be lowercase hex")
    raw = bytes.fromhex(public)
    try:
        if (keytype, scheme) == _SCHEMES["ed25519"]:
            if len(raw) != 32:
                raise ValueError("Ed25519 public key must be 32 bytes")
            return _make_public("ed25519", ed25519.Ed25519PublicKey.from_public_bytes(raw))
        if (keytype, scheme) == _SCHEMES["ecdsa-p256"]:
            if len(raw) != 65:
                raise ValueError("P-256 public key must be a 65-byte uncompressed point")
            pk = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
            return _make_public("ecdsa-p256", pk)
    except ValueError as exc:
        raise FormatError(f"bad public key: {exc}") from None
    raise FormatError(f"unsupported key type {keytype!r} / scheme {scheme!r}")


def sign(key: PrivateKey, data: bytes) -> dict[str, str]:
    """Sign ``data``; return ``{"keyid": ..., "sig": hex}``.

    Example:
        >>> k = generate()
        >>> s = sign(k, b"x")
        >>> verify(public_key_dict(k), bytes.fromhex(s["sig"]), b"x")
        True
    """
    if key.kind == "ed25519":
        sig = key._key.sign(data)  # type: ignore[call-arg]
    else:
        sig = key._key.sign(data, ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg]
    return {"keyid": key.keyid, "sig": sig.hex()}


def verify(pubdict: Mapping[str, Any], signature: bytes, data: bytes) -> bool:
    """True when ``signature`` by the key ``pubdict`` over ``data`` is valid.

    Raises:
        FormatError: ``pubdict`` is not a valid public key dict.
    """
    return load_public(pubdict).verify(signature, data)


def sign_envelope(signed: Mapping[str, Any], keys: Iterable[PrivateKey]) -> bytes:
    """Sign ``signed`` with every key and return the canonical envelope bytes.

    The envelope is ``{"signed": signed, "signatures": [{"keyid", "sig"}, ...]}``;
    each signature is over ``canonical.encode(signed)``. Signatures are sorted by
    key id and each key signs once.

    Raises:
        ValueError: no keys given.
    """
    body = canonical.encode(signed)
    unique = {k.keyid: k for k in keys}
    if not unique:
        raise ValueError("sign_envelope needs at least one key")
    sigs = [sign(unique[kid], body) for kid in sorted(unique)]
    return canonical.encode({"signed": signed, "signatures": sigs})
