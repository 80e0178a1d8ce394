"""Readable ``repr`` for dataclasses that hold digests: bytes fields print as hex.

``Seal(root_hash='3f2a...', ...)`` instead of ``Seal(root_hash=b'?*\\x9c...')``.
Only the repr changes: equality, hashing and the fields' values stay as they are.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def _show(value: object) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return repr(bytes(value).hex())
    return repr(value)


def hex_repr(cls: type[T]) -> type[T]:
    """Class decorator (after ``@dataclass``): bytes fields appear as hex strings in ``repr``."""
    fields = [f.name for f in dataclasses.fields(cls) if f.repr]  # type: ignore[arg-type]

    def __repr__(self: Any) -> str:
        body = ", ".join(f"{name}={_show(getattr(self, name))}" for name in fields)
        return f"{type(self).__qualname__}({body})"

    cls.__repr__ = __repr__  # type: ignore[method-assign]
    return cls
