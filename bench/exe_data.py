"""The ``exe`` benchmark set: real executables and libraries from Debian security updates.

Five files from four bookworm / bookworm-security package updates, each for amd64
(x86-64) and arm64 (AArch64): libcrypto.so.3 and libssl.so.3 (libssl3 3.0.20-1~deb12u2
-> 3.0.22-1~deb12u2), libxml2.so.2 (2.9.14+dfsg-1.3~deb12u4 -> u6), libexpat.so.1
(2.5.0-1+deb12u2 -> u5) and /usr/bin/ssh (openssh-client 1:9.2p1-2+deb12u9 -> u10).
The .deb files are fetched from deb.debian.org by their pool paths, checked against
the SHA-256 that the Debian archive's signed package lists give, and unpacked with
``dpkg-deb``; everything is cached under ``bench/data/exe``. This module only fetches
data (compare_delta.py measures).
"""

from __future__ import annotations

import hashlib
import subprocess
import urllib.request
from pathlib import Path

from data import DATA_DIR, Pair

ARCHIVE = "http://deb.debian.org/"
#: (package, version, arch) -> (path under ARCHIVE, SHA-256 from the package lists)
DEBS: dict[tuple[str, str, str], tuple[str, str]] = {
    ("libssl3", "3.0.20-1~deb12u2", "amd64"): (
        "debian/pool/main/o/openssl/libssl3_3.0.20-1~deb12u2_amd64.deb",
        "89be24b41bff568ee6e7caf5680a3d808e80315ed92e407056ce0fa7a5bda025",
    ),
    ("libssl3", "3.0.20-1~deb12u2", "arm64"): (
        "debian/pool/main/o/openssl/libssl3_3.0.20-1~deb12u2_arm64.deb",
        "a256e03cc3abd7243ac5c6ee91a9deb56478221ef0d3c2b0748551e13140c0bf",
    ),
    ("libssl3", "3.0.22-1~deb12u2", "amd64"): (
        "debian-security/pool/updates/main/o/openssl/libssl3_3.0.22-1~deb12u2_amd64.deb",
        "cb4784740daa9b3b0eaea2b444bbefa686794afbbf3d678d238c1fd9875f2efd",
    ),
    ("libssl3", "3.0.22-1~deb12u2", "arm64"): (
        "debian-security/pool/updates/main/o/openssl/libssl3_3.0.22-1~deb12u2_arm64.deb",
        "3d04ecd8d0f57fed50d205abaeedfcc84c1960073ea085719c00add44b0ccd7f",
    ),
    ("libxml2", "2.9.14+dfsg-1.3~deb12u4", "amd64"): (
        "debian-security/pool/updates/main/libx/libxml2/libxml2_2.9.14+dfsg-1.3~deb12u4_amd64.deb",
        "f3bac32a5f7d32990af06713eef57664a66e98c13750fa8e007c9cbaf49b98c7",
    ),
    ("libxml2", "2.9.14+dfsg-1.3~deb12u4", "arm64"): (
        "debian-security/pool/updates/main/libx/libxml2/libxml2_2.9.14+dfsg-1.3~deb12u4_arm64.deb",
        "e2f98689f3154d2a9c9c16dc20c1b69ca09bc4994e7c9a5353acd92f19ef20c6",
    ),
    ("libxml2", "2.9.14+dfsg-1.3~deb12u6", "amd64"): (
        "debian/pool/main/libx/libxml2/libxml2_2.9.14+dfsg-1.3~deb12u6_amd64.deb",
        "4460e39dda10a815881374217cde08474747cfa018358cd8612c14b390eff53b",
    ),
    ("libxml2", "2.9.14+dfsg-1.3~deb12u6", "arm64"): (
        "debian/pool/main/libx/libxml2/libxml2_2.9.14+dfsg-1.3~deb12u6_arm64.deb",
        "0bc00975e459387535a4bbabe98a398f0e77c9ab82474face18d01ae8ed0dae4",
    ),
    ("libexpat1", "2.5.0-1+deb12u2", "amd64"): (
        "debian/pool/main/e/expat/libexpat1_2.5.0-1+deb12u2_amd64.deb",
        "2255e62fc22a86d2c544b8a3f516da9aee19383ad5742722ab4ce7f66a30dbc8",
    ),
    ("libexpat1", "2.5.0-1+deb12u2", "arm64"): (
        "debian/pool/main/e/expat/libexpat1_2.5.0-1+deb12u2_arm64.deb",
        "8dc1976735acf825e3a922d82f171e20feec7394da2b8c616091983e38706275",
    ),
    ("libexpat1", "2.5.0-1+deb12u5", "amd64"): (
        "debian-security/pool/updates/main/e/expat/libexpat1_2.5.0-1+deb12u5_amd64.deb",
        "cae5ded666d8573dd33060bc66fbac21eea8b101a6b56e2af8bd590fcfa65d79",
    ),
    ("libexpat1", "2.5.0-1+deb12u5", "arm64"): (
        "debian-security/pool/updates/main/e/expat/libexpat1_2.5.0-1+deb12u5_arm64.deb",
        "4a733e7f636de4a4483e3e5d7b02dc8e788b115361a04dd58df89461ce2ae65a",
    ),
    ("openssh-client", "1:9.2p1-2+deb12u9", "amd64"): (
        "debian-security/pool/updates/main/o/openssh/openssh-client_9.2p1-2+deb12u9_amd64.deb",
        "3159b10a9416169926edcdf4daddf16ac71fb56bc4a952d2a73754cc6741c053",
    ),
    ("openssh-client", "1:9.2p1-2+deb12u9", "arm64"): (
        "debian-security/pool/updates/main/o/openssh/openssh-client_9.2p1-2+deb12u9_arm64.deb",
        "8058f41696f15d1c8046d3ba7c0959c6385fde5a86385ddb32ca7cbd83644797",
    ),
    ("openssh-client", "1:9.2p1-2+deb12u10", "amd64"): (
        "debian/pool/main/o/openssh/openssh-client_9.2p1-2+deb12u10_amd64.deb",
        "42c250b8b9110382488c53c066a960bc564ddac2cb9e449f47b6cdbb5fc1cb60",
    ),
    ("openssh-client", "1:9.2p1-2+deb12u10", "arm64"): (
        "debian/pool/main/o/openssh/openssh-client_9.2p1-2+deb12u10_arm64.deb",
        "72f7cb7eb432038a62cd89e0552b352a514e880fe3907e73dc50ca2ef6d088d7",
    ),
}
#: name -> (package, old version, new version, file name inside the package)
UPDATES = {
    "libcrypto": ("libssl3", "3.0.20-1~deb12u2", "3.0.22-1~deb12u2", "libcrypto.so.3"),
    "libssl": ("libssl3", "3.0.20-1~deb12u2", "3.0.22-1~deb12u2", "libssl.so.3"),
    "libxml2": (
        "libxml2",
        "2.9.14+dfsg-1.3~deb12u4",
        "2.9.14+dfsg-1.3~deb12u6",
        "libxml2.so.2.9.14",
    ),
    "libexpat": ("libexpat1", "2.5.0-1+deb12u2", "2.5.0-1+deb12u5", "libexpat.so.1.8.10"),
    "ssh": ("openssh-client", "1:9.2p1-2+deb12u9", "1:9.2p1-2+deb12u10", "ssh"),
}
ARCHES = ("amd64", "arm64")
EXE_DIR = DATA_DIR / "exe"


def _deb(package: str, version: str, arch: str) -> Path:
    path, sha = DEBS[(package, version, arch)]
    dest = EXE_DIR / "debs" / Path(path).name
    if dest.exists() and hashlib.sha256(dest.read_bytes()).hexdigest() == sha:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(ARCHIVE + path, timeout=60) as r:
        data = r.read()
    if hashlib.sha256(data).hexdigest() != sha:
        raise RuntimeError(f"{path}: SHA-256 does not match the archive's package list")
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def _member(deb: Path, name: str) -> Path:
    tree = EXE_DIR / "pkgs" / deb.name.removesuffix(".deb")
    if not tree.exists():
        tmp = tree.with_name(tree.name + ".tmp")
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
        tmp.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        tmp.rename(tree)
    found = sorted(p for p in tree.rglob(name) if p.is_file() and not p.is_symlink())
    if not found:
        raise RuntimeError(f"{name} not found in {deb.name}")
    return found[0]


def exe_pairs(
    names: tuple[str, ...] = tuple(UPDATES), arches: tuple[str, ...] = ARCHES
) -> list[Pair]:
    """The pairs of the ``exe`` set, fetched once, in the order: name, then architecture."""
    out = []
    for name in names:
        package, v_old, v_new, member = UPDATES[name]
        for arch in arches:
            old = _member(_deb(package, v_old, arch), member)
            new = _member(_deb(package, v_new, arch), member)
            desc = f"{member} ({package} {v_old} -> {v_new}, {arch})"
            out.append(Pair(f"exe-{name}-{arch}", old, new, desc))
    return out
