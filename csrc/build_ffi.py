"""cffi builder for bsipatch's native core (API mode).

The cdef is the concatenation of the bare declaration headers ``csrc/bsi_decls*.h``
(each valid cffi cdef as it stands); the sources are every ``csrc/bsi_*.c``.
No I/O or policy lives in C: see DESIGN.md.

Environment switches read at build time:

* ``BSIPATCH_SANITIZE=1``: build with AddressSanitizer + UndefinedBehaviorSanitizer
  (run Python with ``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``; see README).
* ``BSIPATCH_WERROR=1``: turn compiler warnings into errors (CI uses it).
* ``BSIPATCH_DEBUG=1``: ``-O0 -g``.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _version() -> str:
    text = (ROOT / "bsipatch" / "_version.py").read_text(encoding="utf-8")
    m = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    if not m:
        raise RuntimeError("cannot find __version__ in bsipatch/_version.py")
    return m.group(1)


def _flags() -> tuple[list[str], list[str]]:
    cflags = ["-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden", "-pthread"]
    ldflags = ["-pthread"]
    if os.environ.get("BSIPATCH_DEBUG") == "1":
        cflags += ["-O0", "-g"]
    else:
        cflags += ["-O3"]
    if os.environ.get("BSIPATCH_SANITIZE") == "1":
        san = [
            "-fsanitize=address,undefined",
            "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=undefined",
            "-g",
        ]
        cflags += san
        ldflags += san
    if os.environ.get("BSIPATCH_WERROR") == "1":
        cflags += ["-Werror"]
    return cflags, ldflags


decl_files = sorted(HERE.glob("bsi_decls*.h"))
sources = sorted(str(p.relative_to(ROOT)) for p in HERE.glob("bsi_*.c"))
cdef = "\n".join(p.read_text(encoding="utf-8") for p in decl_files)
cflags, ldflags = _flags()

ffibuilder = FFI()
ffibuilder.cdef(cdef)
ffibuilder.set_source(
    "bsipatch._bsi_native",
    '#include "bsipatch.h"\n',
    sources=sources,
    include_dirs=[str(HERE.relative_to(ROOT))],
    define_macros=[("BSI_VERSION_STRING", f'"{_version()}"')],
    extra_compile_args=cflags,
    extra_link_args=ldflags,
)

if __name__ == "__main__":
    sys.exit(ffibuilder.compile(verbose=True) and 0)
