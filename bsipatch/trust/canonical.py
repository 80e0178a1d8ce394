"""Canonical JSON: the one byte encoding that bsipatch signs and hashes.

The rules (also in docs/metadata.md):

- objects have ``str`` keys, sorted by Unicode code point, and no duplicate keys;
- no insignificant white space (``,`` and ``:`` separators only);
- strings are UTF-8, written as themselves (no ``\\u`` escapes except the ones JSON
  requires for ``"``, ``\\`` and control characters); lone surrogates are refused;
- numbers are integers only, of any size Python can print (floats, ``NaN`` and
  ``Infinity`` are refused, so are ``1.0`` and ``1e3`` on input);
- ``true``, ``false``, ``null``, arrays and objects as usual.

:func:`encode` refuses anything outside that model; :func:`decode` is strict (UTF-8
only, no byte-order mark, no duplicate keys, no floats) and, with ``canonical=True``,
also demands that the input is byte-for-byte the canonical encoding of what it
parsed. No signing and no file I/O here.
"""

from __future__ import annotations

import json
from typing import Any

from bsipatch.errors import FormatError

__all__ = ["decode", "encode"]

#: Deepest nesting accepted on decode; metadata is shallow (about 6 levels).
MAX_DEPTH = 32

_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)


def _check(obj: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise FormatError(f"JSON nested deeper than {MAX_DEPTH} levels")
    if obj is None or obj is True or obj is False:
        return
    if isinstance(obj, int):
        return
    if isinstance(obj, str):
        _check_str(obj)
        return
    if isinstance(obj, float):
        raise FormatError(f"floats are not allowed in canonical JSON (found {obj!r})")
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise FormatError(
                    f"object keys must be strings in canonical JSON (found {type(key).__name__})"
                )
            _check_str(key)
            _check(value, depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        for value in obj:
            _check(value, depth + 1)
        return
    raise FormatError(f"type {type(obj).__name__} cannot be encoded as canonical JSON")


def _check_str(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise FormatError("string is not valid Unicode (lone surrogate)") from exc


def encode(obj: Any) -> bytes:
    """Encode ``obj`` as canonical JSON bytes.

    Args:
        obj: ``dict`` (with ``str`` keys), ``list``/``tuple``, ``str``, ``int``,
            ``bool`` or ``None``, nested.

    Returns:
        The canonical UTF-8 encoding.

    Raises:
        FormatError: a float (including NaN/Infinity), a non-``str`` key, a lone
            surrogate, an unsupported type, too deep nesting, or an integer too
            large to print.

    Example:
        >>> encode({"b": 1, "a": ["é", None]})
        b'{"a":["\\xc3\\xa9",null],"b":1}'
    """
    _check(obj, 0)
    try:
        return _ENCODER.encode(obj).encode("utf-8")
    except ValueError as exc:  # int too large for str() (sys.int_max_str_digits)
        raise FormatError(f"cannot encode as canonical JSON: {exc}") from exc


def _refuse_float(text: str) -> Any:
    raise FormatError(f"floats are not allowed in canonical JSON (found {text})")


def _refuse_constant(text: str) -> Any:
    raise FormatError(f"{text} is not allowed in canonical JSON")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f"duplicate key {key!r} in JSON object")
        out[key] = value
    return out


def decode(data: bytes | bytearray | memoryview, *, canonical: bool = False) -> Any:
    """Parse JSON strictly.

    Args:
        data: UTF-8 bytes (no byte-order mark).
        canonical: also require ``data`` to be exactly ``encode(result)``.

    Returns:
        The parsed value (``dict``/``list``/``str``/``int``/``bool``/``None``).

    Raises:
        FormatError: invalid UTF-8 or JSON, a duplicate key, a float, NaN/Infinity,
            a lone surrogate, too deep nesting, or (with ``canonical``) any byte
            that differs from the canonical encoding.

    Example:
        >>> decode(b'{"a":1}', canonical=True)
        {'a': 1}
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    if raw.startswith(b"\xef\xbb\xbf"):
        raise FormatError("JSON starts with a byte-order mark")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"JSON is not valid UTF-8: {exc.reason} at byte {exc.start}") from exc
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_float=_refuse_float,
            parse_constant=_refuse_constant,
        )
    except FormatError:
        raise
    except RecursionError as exc:
        raise FormatError("JSON nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, int too long
        raise FormatError(f"invalid JSON: {exc}") from exc
    _check(obj, 0)
    if canonical and encode(obj) != raw:
        raise FormatError("JSON is not in canonical form (key order, white space or escapes)")
    return obj
