"""Generate tests/vectors/sha256_nist.txt from NIST's published SHA-256 examples.

Each entry below is a message description and the digest as NIST publishes it
(sources in README.md beside this script). The script recomputes every digest
with Python's hashlib (streaming, so the 1.6 GB messages need little memory),
refuses to write anything if one disagrees, and writes one line per vector:

    <kind>:<arg>[:<count>] <digest hex>

where kind is ``hex`` (message bytes in hex), ``ascii`` (message text) or
``repeat`` (byte in hex repeated <count> times). Run:

    python tests/vectors/gen_sha256_vectors.py
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

# (message, digest) as published. FIPS 180-2 appendix B / NIST "Examples with
# intermediate values" (SHA256.pdf, SHA2_Additional.pdf).
NIST = [
    ("hex:", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    ("ascii:abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (
        "ascii:abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    ),
    (
        "ascii:abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn"
        "hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
        "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
    ),
    ("repeat:61:1000000", "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
    ("hex:bd", "68325720aabd7c82f30f554b313d0570c95accbb7dc4b5aae11204c08ffe732b"),
    ("hex:c98c8e55", "7abc22c0ae5af26ce93dbb94433a0e0b2e119d014f8e7f65bd56c61ccccd9504"),
    ("repeat:00:55", "02779466cdec163811d078815c633f21901413081449002f24aa3e80f0b88ef7"),
    ("repeat:00:56", "d4817aa5497628e7c77e6b606107042bbba3130888c5f47a375e6179be789fbb"),
    ("repeat:00:57", "65a16cb7861335d5ace3c60718b5052e44660726da4cd13bb745381b235a1785"),
    ("repeat:00:64", "f5a5fd42d16a20302798ef6ed309979b43003d2320d9f0e8ea9831a92759fb4b"),
    ("repeat:00:1000", "541b3e9daa09b20bf85fa273e5cbd3e80185aa4ec298e765db87742b70138a53"),
    ("repeat:41:1000", "c2e686823489ced2017f6059b8b239318b6364f6dcd835d0a519105a1eadd6e4"),
    ("repeat:55:1005", "f4d62ddec0f3dd90ea1380fa16a5ff8dc4c54b21740650f24afc4120903552b0"),
    ("repeat:00:1000000", "d29751f2649b32ff572b5e0a9f541ea660a50f94ff0beedfb0b692b924cc8025"),
    ("repeat:5a:536870912", "15a1868c12cc53951e182344277447cd0979536badcc512ad24c67e9b2d4f3dd"),
    ("repeat:00:1090519040", "461c19a93bd4344f9215f5ec64357090342bc66b15a148317d276e31cbc20b53"),
    ("repeat:42:1610612798", "c23ce8a7895f4b21ec0daf37920ac0a262a220045a03eb2dfed48ef9b05aabea"),
]


def chunks(spec: str, chunk: int = 1 << 24):
    """Yield the message described by ``spec`` in pieces."""
    kind, _, rest = spec.partition(":")
    if kind == "hex":
        yield bytes.fromhex(rest)
    elif kind == "ascii":
        yield rest.encode("ascii")
    elif kind == "repeat":
        byte, count = rest.split(":")
        left = int(count)
        block = bytes.fromhex(byte) * min(left, chunk)
        while left:
            n = min(left, len(block))
            yield block[:n]
            left -= n
    else:
        raise ValueError(f"unknown message kind {kind!r}")


def main() -> int:
    lines = []
    for spec, digest in NIST:
        h = hashlib.sha256()
        for piece in chunks(spec):
            h.update(piece)
        if h.hexdigest() != digest:
            print(f"hashlib disagrees with NIST on {spec[:40]}: {h.hexdigest()}", file=sys.stderr)
            return 1
        lines.append(f"{spec} {digest}")
    out = Path(__file__).with_name("sha256_nist.txt")
    out.write_text("\n".join(lines) + "\n", encoding="ascii")
    print(f"wrote {len(lines)} vectors to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
