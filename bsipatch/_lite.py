"""Start-up-cheap stand-ins for the one runtime helper of ``typing`` the apply path uses.

Importing :mod:`typing` costs a process about as much as the rest of an empty apply
(it loads ``re``, ``enum``, ``functools`` and builds hundreds of objects), so the
modules a ``bsipatch apply`` loads import it only for type checkers::

    TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
    if TYPE_CHECKING:
        from typing import NamedTuple
    else:
        from bsipatch._lite import NamedTuple

:class:`NamedTuple` here builds the same class as ``typing.NamedTuple`` does (a
``collections.namedtuple`` with the annotated fields, their defaults, and the class
body's methods, properties and docstring); type checkers see typing's. Nothing else
lives here.
"""

from __future__ import annotations

import collections

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_namedtuple: Callable[..., type] = collections.namedtuple

# what typing.NamedTuple refuses to let a class body overwrite, and copies never
_PROHIBITED = frozenset(
    {"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults"}
    | {"_make", "_replace", "_asdict", "_source"}
)
_SPECIAL = frozenset({"__module__", "__name__", "__qualname__", "__annotations__"})


class _NamedTupleMeta(type):
    def __new__(mcls, name: str, bases: tuple[type, ...], ns: dict[str, object]) -> type:
        if ns.get("_lite_root"):
            return super().__new__(mcls, name, bases, ns)
        annotations = ns.get("__annotations__", {})
        assert isinstance(annotations, dict)
        defaults = [ns[f] for f in annotations if f in ns]
        if any(f not in ns for f in list(annotations)[len(annotations) - len(defaults) :]):
            raise TypeError(f"{name}: a field without a default follows one with a default")
        cls = _namedtuple(name, list(annotations), defaults=defaults, module=ns["__module__"])
        cls.__annotations__ = dict(annotations)
        cls.__qualname__ = str(ns.get("__qualname__", name))
        for key, value in ns.items():
            if key in _PROHIBITED:
                raise AttributeError(f"cannot overwrite NamedTuple attribute {key}")
            if key not in _SPECIAL and key not in annotations:
                setattr(cls, key, value)
        return cls


class NamedTuple(metaclass=_NamedTupleMeta):
    """Base of a class written as for ``typing.NamedTuple`` (see the module docstring)."""

    _lite_root = True
