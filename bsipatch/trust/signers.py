"""Signing keys of a TUF repository: make them, store them, load them as signers.

``bsipatch keygen`` makes one key per TUF role (``root``, ``targets``, ``snapshot``,
``timestamp``) with :mod:`securesystemslib` (Ed25519 or ECDSA P-256) and writes
``DIR/<role>-<n>.pem`` (PKCS#8, encrypted when a passphrase is given, mode 0600) and
``DIR/<role>-<n>.pub.json`` (the public key as TUF writes it, with its key id).
A key kept elsewhere (an HSM, a cloud KMS, a hardware token) is named instead by
``DIR/<role>-<n>.uri`` holding a securesystemslib signer URI (``hsm:...``,
``awskms:...``, ``gcpkms:...``) next to its ``.pub.json``;
:func:`load_signers` returns a :class:`securesystemslib.signer.Signer` either way.

No metadata is built or verified here (see :mod:`bsipatch.trust.tufrepo`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey

from bsipatch._io import PathLike, atomic_write
from bsipatch.errors import KeyFileError

__all__ = [
    "KINDS",
    "ONLINE_ROLES",
    "ROLES",
    "KeySet",
    "generate",
    "generate_keydir",
    "load_public_keys",
    "load_signers",
    "private_pem",
]

#: TUF's top-level roles, in the order keygen writes them.
ROLES = ("root", "targets", "snapshot", "timestamp")
#: Roles whose keys a service keeps online: they only vouch for freshness.
ONLINE_ROLES = ("snapshot", "timestamp")
#: Key types ``keygen --type`` accepts.
KINDS = ("ed25519", "ecdsa-p256")

_FILE = re.compile(r"^(root|targets|snapshot|timestamp)-(\d+)\.pub\.json$")


def generate(kind: str = "ed25519") -> CryptoSigner:
    """A fresh in-memory signer of ``kind`` (``ed25519`` or ``ecdsa-p256``).

    Raises:
        ValueError: unknown kind.
    """
    if kind == "ed25519":
        return CryptoSigner.generate_ed25519()
    if kind == "ecdsa-p256":
        return CryptoSigner.generate_ecdsa()
    raise ValueError(f"key type must be one of {', '.join(KINDS)}, found {kind!r}")


def private_pem(signer: CryptoSigner, passphrase: str | None = None) -> bytes:
    """The signer's private key as PKCS#8 PEM, encrypted when ``passphrase`` is given."""
    enc: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if passphrase:
        enc = serialization.BestAvailableEncryption(passphrase.encode())
    pkey = signer._private_key
    return pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _existing(keydir: Path) -> list[Path]:
    if not keydir.is_dir():
        return []
    return sorted(p for p in keydir.iterdir() if _FILE.match(p.name))


def generate_keydir(
    keydir: PathLike,
    *,
    kind: str = "ed25519",
    passphrase: str | None = None,
    count: Mapping[str, int] | None = None,
    add: bool = False,
) -> dict[str, list[str]]:
    """Make keys for every role (``count`` per role, default 1) in ``keydir``.

    Args:
        keydir: the key directory (created, mode 0700).
        kind: ``ed25519`` or ``ecdsa-p256``.
        passphrase: encrypt the private keys with it.
        count: role -> number of keys (roles left out get none when ``add`` is set,
            else 1).
        add: allow a directory that already holds keys (new keys get the next numbers).

    Returns:
        role -> key ids made.

    Raises:
        KeyFileError: the directory already holds keys and ``add`` is false.
    """
    d = Path(keydir)
    have = _existing(d)
    if have and not add:
        raise KeyFileError(
            f"{d} already holds {len(have)} key(s) ({have[0].name}...); keygen does not mix "
            "key sets: use another directory, or --add to add keys to this one"
        )
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    d.chmod(0o700)
    wanted = dict(count) if count is not None else {r: 1 for r in ROLES}
    made: dict[str, list[str]] = {}
    for role in ROLES:
        for _ in range(wanted.get(role, 0)):
            n = 1 + max(
                (
                    int(m.group(2))
                    for p in _existing(d)
                    if (m := _FILE.match(p.name)) and m.group(1) == role
                ),
                default=0,
            )
            signer = generate(kind)
            with atomic_write(d / f"{role}-{n}.pem") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(private_pem(signer, passphrase))
            pub = signer.public_key
            with atomic_write(d / f"{role}-{n}.pub.json") as f:
                f.write(json.dumps({"keyid": pub.keyid, **pub.to_dict()}, sort_keys=True).encode())
            made.setdefault(role, []).append(pub.keyid)
    return made


def _load_pub(path: Path) -> SSlibKey:
    try:
        d = json.loads(path.read_bytes())
        keyid = d.pop("keyid")
        key = Key.from_dict(keyid, d)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a public key file: {exc}") from exc
    if not isinstance(key, SSlibKey):
        raise KeyFileError(f"{path}: unsupported key type {type(key).__name__}")
    return key


def load_public_keys(keydir: PathLike, role: str) -> list[SSlibKey]:
    """The public keys of ``role`` in ``keydir`` (sorted by file number)."""
    out = []
    for p in _existing(Path(keydir)):
        m = _FILE.match(p.name)
        if m and m.group(1) == role:
            out.append(_load_pub(p))
    return out


def _load_pem(path: Path, pub: SSlibKey, passphrase: str | None) -> Signer:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the private key: {exc.strerror}") from exc
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    if encrypted and not passphrase:
        raise KeyFileError(f"{path} is encrypted: give its passphrase (--passphrase-env VAR)")
    try:
        pkey = serialization.load_pem_private_key(
            data, passphrase.encode() if (encrypted and passphrase) else None
        )
        return CryptoSigner(pkey, pub)
    except (ValueError, TypeError) as exc:
        what = "wrong passphrase or damaged key" if encrypted else "damaged or mismatched key"
        raise KeyFileError(f"{path}: cannot load the private key ({what})") from exc


def load_signers(keydir: PathLike, role: str, passphrase: str | None = None) -> list[Signer]:
    """Signers for every key of ``role`` in ``keydir``.

    A key with a ``.pem`` file is loaded from it (decrypted with ``passphrase``); a key
    with a ``.uri`` file is loaded with ``Signer.from_priv_key_uri`` (HSM, KMS...).
    A public key with neither is skipped (a key whose private half lives elsewhere).

    Raises:
        KeyFileError: a private key cannot be loaded (wrong passphrase, bad URI...).
    """
    d = Path(keydir)
    out: list[Signer] = []
    for p in _existing(d):
        m = _FILE.match(p.name)
        if not m or m.group(1) != role:
            continue
        pub = _load_pub(p)
        stem = p.name[: -len(".pub.json")]
        pem, uri = d / f"{stem}.pem", d / f"{stem}.uri"
        if pem.exists():
            out.append(_load_pem(pem, pub, passphrase))
        elif uri.exists():
            text = uri.read_text().strip()
            try:
                out.append(Signer.from_priv_key_uri(text, pub))
            except (ValueError, OSError) as exc:
                raise KeyFileError(f"{uri}: cannot load signer {text!r}: {exc}") from exc
    return out


@dataclass
class KeySet:
    """Signers by role, as commands that sign take them.

    Attributes:
        signers: role -> signers (only the roles the caller holds keys for).
    """

    signers: dict[str, list[Signer]]

    @classmethod
    def from_dir(
        cls, keydir: PathLike, roles: Sequence[str] = ROLES, passphrase: str | None = None
    ) -> KeySet:
        """Load the signers of ``roles`` from a key directory."""
        return cls({r: load_signers(keydir, r, passphrase) for r in roles})

    def get(self, role: str) -> list[Signer]:
        """The signers of ``role`` (empty when none)."""
        return list(self.signers.get(role, []))

    def only(self, roles: Sequence[str]) -> KeySet:
        """A copy holding only ``roles`` (e.g. the online keys)."""
        return KeySet({r: self.get(r) for r in roles})
