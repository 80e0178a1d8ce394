"""Start-up helpers: bsipatch._lite.NamedTuple behaves as typing.NamedTuple, and
bsipatch._zstd loads zstandard's C backend alone, in a fresh process."""

from __future__ import annotations

import pickle
import subprocess
import sys
import typing

import pytest

from bsipatch._lite import NamedTuple, suppress


class Lite(NamedTuple):
    """A record."""

    a: int
    b: bytes = b"x"

    @property
    def twice(self) -> int:
        return 2 * self.a

    @classmethod
    def make(cls, a: int) -> Lite:
        return cls(a, b"y")


class Typed(typing.NamedTuple):
    """A record."""

    a: int
    b: bytes = b"x"


def test_lite_namedtuple_is_typings() -> None:
    assert Lite(1) == Typed(1) == (1, b"x")
    assert Lite._fields == Typed._fields
    assert Lite._field_defaults == Typed._field_defaults
    assert Lite(3).twice == 6 and Lite.make(2) == (2, b"y")
    assert Lite(1)._replace(b=b"z") == (1, b"z")
    assert Lite.__doc__ == "A record." and Lite.__name__ == "Lite"
    assert Lite.__module__ == __name__ and Lite.__annotations__ == {"a": "int", "b": "bytes"}
    assert repr(Lite(1)) == "Lite(a=1, b=b'x')"
    a, b = Lite(5)
    assert (a, b) == (5, b"x")
    assert Lite(b=b"q", a=2) == Typed(b=b"q", a=2) == (2, b"q")
    assert Lite._make([7, b"m"]) == Typed._make([7, b"m"])
    assert Lite(1)._asdict() == Typed(1)._asdict() == {"a": 1, "b": b"x"}
    assert pickle.loads(pickle.dumps(Lite(4, b"p"))) == Lite(4, b"p")
    assert type(pickle.loads(pickle.dumps(Lite(4)))) is Lite
    assert hash(Lite(1)) == hash((1, b"x")) and isinstance(Lite(1), tuple)
    assert Lite.__match_args__ == ("a", "b") and Lite.a.__doc__ == "Alias for field number 0"
    for args, kwargs in [((), {}), ((1, b"", 3), {}), ((1,), {"a": 2}), ((1,), {"c": 2})]:
        with pytest.raises(TypeError):
            Lite(*args, **kwargs)
        with pytest.raises(TypeError):
            Typed(*args, **kwargs)
    with pytest.raises(ValueError):
        Lite(1)._replace(c=3)
    with pytest.raises(AttributeError):
        Lite(1).a = 2  # type: ignore[misc]


def test_lite_namedtuple_refuses_what_typing_refuses() -> None:
    with pytest.raises(TypeError):

        class Bad(NamedTuple):
            a: int = 1
            b: int

    with pytest.raises(AttributeError):

        class Worse(NamedTuple):
            a: int

            def _replace(self) -> None:  # type: ignore[override]
                pass


def test_suppress_is_contextlibs() -> None:
    with suppress(KeyError, OSError):
        raise FileNotFoundError("swallowed: an OSError")
    with pytest.raises(ValueError), suppress(KeyError):
        raise ValueError("not listed")
    with suppress(KeyError):
        pass


_FRESH = """
import sys
before = set(sys.modules)
from bsipatch._zstd import zstd
z = zstd()
loaded = set(sys.modules) - before
assert "zstandard" not in loaded and "typing" not in loaded and "platform" not in loaded, loaded
import zstandard  # a later import reuses the loaded backend
c = zstandard.ZstdCompressor(level=3).compress(b"abc" * 1000)
assert z.ZstdDecompressor().decompress(c) == b"abc" * 1000
assert z.ZstdError is zstandard.ZstdError
try:
    z.ZstdDecompressor().decompress(c[:-3])
except z.ZstdError:
    print("ok")
"""


def test_zstd_backend_loads_alone() -> None:
    # a fresh interpreter: bsipatch._zstd loads neither the package nor typing, and the
    # module it gives decodes and is the one a later `import zstandard` uses
    proc = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
