"""Test inputs for the executable-aware diff: synthetic ELF files and real Debian ones.

Synthetic: C source for a small library whose functions call each other and read
global tables and strings, built by the C compiler (gcc for x86-64,
aarch64-linux-gnu-gcc for AArch64) in versions that differ the way security fixes
do: a function inserted in the middle, or one function changed. Real: libexpat1 from
Debian bookworm (2.5.0-1+deb12u2) and bookworm-security (2.5.0-1+deb12u5) for amd64
and arm64, fetched from deb.debian.org (pinned SHA-256, about 380 KB in all) into
pytest's cache. Helpers skip locally when a compiler or the network is missing and
fail under CI=true.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

COMPILERS = {"x86_64": "gcc", "aarch64": "aarch64-linux-gnu-gcc"}
COMPILER_PACKAGES = {"x86_64": "gcc", "aarch64": "gcc-aarch64-linux-gnu"}


def missing(msg: str) -> None:
    """Skip locally, fail in CI."""
    if CI:
        pytest.fail(msg + " (CI must provide it)")
    pytest.skip(msg)


_BODIES = (
    "s += table[(x + {a}) & 255] * {b}; if (s & 1) s ^= ext_hook(s + {c});",
    "for (int k = 0; k < (x & {m}); k++) s += (int)names[(k + {a}) % {n}][k & 3] - {b};",
    "if (x > {c}) s = f{g}(x - {d}); else s = (int)names[{e}][0] * {a};",
    "counters[{f}] += x * {b}; s -= (int)counters[({f} + 3) & 63] >> {d};",
    "switch (x & 3) {{ case 0: s = {a}; break; case 1: s = f{g}(s + {c}); break; "
    "default: s = table[{e} & 255]; }}",
    "s = (s << {d}) ^ (x * {c}) ^ table[(s >> 3) & 255]; s += ext_hook(s) & {m};",
)


def source(n: int = 48, *, insert_at: int | None = None, change: int | None = None) -> str:
    """C source of a library of ``n`` functions; optionally one more function inserted
    before function ``insert_at``, or function ``change`` given a different body."""
    parts = [
        "extern int ext_hook(int);",
        "static const char *names[] = {" + ", ".join(f'"name-{i}"' for i in range(n)) + "};",
        "int table[256];",
        "static long counters[64];",
        "typedef int (*fn_t)(int);",
    ]
    parts += [f"int f{i}(int x);" for i in range(n)]
    for i in range(n):
        if insert_at == i:
            parts.append(
                "int inserted(int x) { int s = 0; for (int k = 0; k < x; k++) "
                "{ s += table[(k * 7) & 255] ^ (int)names[k % 3][0]; counters[k & 63]++; } "
                "return s + ext_hook(s); }"
            )
        body = []
        for j in range(2 + i % 4):
            v = {
                "a": i * 3 + j,
                "b": i % 7 + 2,
                "c": i * 11 % 97,
                "d": j + 1,
                "e": (i + j) % n,
                "f": (i * 5 + j) % 64,
                "g": (i * 7 + j + 3) % n,
                "m": (1 << (i % 5 + 2)) - 1,
                "n": n,
            }
            body.append(_BODIES[(i * 5 + j * 3) % len(_BODIES)].format(**v))
        if change == i:
            body.append("s += 3 * table[(x + 11) & 255] - ext_hook(x ^ s);")
        parts.append(f"int f{i}(int x) {{ int s = x; " + " ".join(body) + " return s; }")
    parts.append("static fn_t dispatch[] = {" + ", ".join(f"f{i}" for i in range(n)) + "};")
    parts.append(f"int call(int k, int x) {{ return dispatch[k % {n}](x); }}")
    return "\n".join(parts) + "\n"


def build(tmp: Path, name: str, src: str, arch: str = "x86_64") -> Path:
    """Compile ``src`` into a shared object (-O2 -fPIC) for ``arch``."""
    cc = shutil.which(COMPILERS[arch])
    if cc is None:
        missing(f"{COMPILERS[arch]} not found (Debian package {COMPILER_PACKAGES[arch]})")
        raise AssertionError("unreachable")
    c = tmp / f"{name}.c"
    c.write_text(src, encoding="utf-8")
    out = tmp / f"{name}.so"
    # no inlining or inter-procedural cloning: a changed function stays one changed function
    flags = ["-O2", "-fno-inline", "-fno-ipa-cp", "-fno-ipa-sra", "-fno-ipa-icf", "-fPIC"]
    flags.append("-fno-toplevel-reorder")  # functions in source order: an insert shifts
    flags += ["-shared", "-nostdlib", "-Wl,--build-id=none"]
    subprocess.run([cc, *flags, str(c), "-o", str(out)], check=True)
    return out


def build_pair(tmp: Path, arch: str, **change: int) -> tuple[bytes, bytes]:
    """(old, new) libraries of 200 functions; new made with ``source(**change)``; the two
    compile in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        fa = pool.submit(build, tmp, "old", source(200), arch)
        fb = pool.submit(build, tmp, "new", source(200, **change), arch)
        return fa.result().read_bytes(), fb.result().read_bytes()


_BUILT: dict[tuple[str, str], tuple[bytes, bytes]] = {}


def insert_pair(tmp: Path, arch: str) -> tuple[bytes, bytes]:
    """A function inserted in the middle of a library (built once per test process)."""
    if (arch, "insert") not in _BUILT:
        _BUILT[arch, "insert"] = build_pair(tmp, arch, insert_at=100)
    return _BUILT[arch, "insert"]


def change_pair(tmp: Path, arch: str) -> tuple[bytes, bytes]:
    """One function of a library changed, it grows (built once per test process)."""
    if (arch, "change") not in _BUILT:
        _BUILT[arch, "change"] = build_pair(tmp, arch, change=100)
    return _BUILT[arch, "change"]


# (arch, version) -> (url, sha256)
DEBS = {
    ("amd64", "2.5.0-1+deb12u2"): (
        "http://deb.debian.org/debian/pool/main/e/expat/libexpat1_2.5.0-1+deb12u2_amd64.deb",
        "2255e62fc22a86d2c544b8a3f516da9aee19383ad5742722ab4ce7f66a30dbc8",
    ),
    ("amd64", "2.5.0-1+deb12u5"): (
        "http://deb.debian.org/debian-security/pool/updates/main/e/expat/"
        "libexpat1_2.5.0-1+deb12u5_amd64.deb",
        "cae5ded666d8573dd33060bc66fbac21eea8b101a6b56e2af8bd590fcfa65d79",
    ),
    ("arm64", "2.5.0-1+deb12u2"): (
        "http://deb.debian.org/debian/pool/main/e/expat/libexpat1_2.5.0-1+deb12u2_arm64.deb",
        "8dc1976735acf825e3a922d82f171e20feec7394da2b8c616091983e38706275",
    ),
    ("arm64", "2.5.0-1+deb12u5"): (
        "http://deb.debian.org/debian-security/pool/updates/main/e/expat/"
        "libexpat1_2.5.0-1+deb12u5_arm64.deb",
        "4a733e7f636de4a4483e3e5d7b02dc8e788b115361a04dd58df89461ce2ae65a",
    ),
}
OLD_VERSION, NEW_VERSION = "2.5.0-1+deb12u2", "2.5.0-1+deb12u5"
MEMBER = "libexpat.so.1.8.10"


def _member(deb: bytes, name: str) -> bytes:
    """The file called ``name`` in a .deb's data archive (read with dpkg-deb)."""
    dpkg = shutil.which("dpkg-deb")
    if dpkg is None:
        missing("dpkg-deb not found (Debian package dpkg)")
    assert dpkg is not None
    tar = subprocess.run(
        [dpkg, "--fsys-tarfile", "/dev/stdin"], input=deb, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        for m in tf.getmembers():
            if m.isfile() and m.name.endswith("/" + name):
                f = tf.extractfile(m)
                assert f is not None
                return f.read()
    raise AssertionError(f"{name} not in the package")


def expat(cache: Path, arch: str, version: str) -> Path:
    """libexpat.so.1 of ``version`` for ``arch`` (downloaded once into ``cache``)."""
    dest = cache / f"libexpat-{arch}-{version}.so"
    if dest.exists():
        return dest
    url, sha = DEBS[(arch, version)]
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            deb = r.read()
    except OSError as exc:
        missing(f"cannot download {url}: {exc}")
        raise AssertionError("unreachable") from exc
    if sha and hashlib.sha256(deb).hexdigest() != sha:
        raise AssertionError(f"{url}: SHA-256 {hashlib.sha256(deb).hexdigest()}, expected {sha}")
    data = _member(deb, MEMBER)
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def cache_dir(request: pytest.FixtureRequest, tmp: pytest.TempPathFactory) -> Path:
    """pytest's cache directory for downloads (a temporary one without the cache plugin)."""
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir("exe-debs")) if cache is not None else tmp.mktemp("exe-debs")


def expat_pairs(cache: Path) -> dict[str, tuple[Path, Path]]:
    """{arch: (old, new)} libexpat.so.1 of the two versions, amd64 and arm64."""
    return {
        a: (expat(cache, a, OLD_VERSION), expat(cache, a, NEW_VERSION)) for a in ("amd64", "arm64")
    }


def standard_pairs(
    request: pytest.FixtureRequest, tmp: pytest.TempPathFactory
) -> dict[str, tuple[bytes, bytes]]:
    """The pairs the executable tests share: compiler-built insert/change pairs of both
    architectures and Debian's libexpat update, amd64 and arm64, as bytes."""
    out = {
        "x86-insert": insert_pair(tmp.mktemp("xi"), "x86_64"),
        "x86-change": change_pair(tmp.mktemp("xc"), "x86_64"),
        "a64-insert": insert_pair(tmp.mktemp("ai"), "aarch64"),
        "a64-change": change_pair(tmp.mktemp("ac"), "aarch64"),
    }
    for arch, (o, n) in expat_pairs(cache_dir(request, tmp)).items():
        out[f"expat-{arch}"] = (o.read_bytes(), n.read_bytes())
    return out
