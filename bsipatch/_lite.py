"""Start-up-cheap stand-ins for the few runtime helpers of ``typing`` and ``contextlib``
the apply path uses.

Importing :mod:`typing` costs a process about as much as the rest of an empty apply
(it loads ``re``, ``enum``, ``functools`` and builds hundreds of objects), and
:mod:`contextlib` loads ``collections`` and ``functools``; a ``bsipatch apply`` process
loads neither. The modules it imports use typing only for type checkers::

    TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
    if TYPE_CHECKING:
        from typing import NamedTuple
    else:
        from bsipatch._lite import NamedTuple

:class:`NamedTuple` here builds what ``typing.NamedTuple`` builds (a tuple subclass
with the annotated fields as read-only properties, their defaults, ``_fields``,
``_field_defaults``, ``_make``, ``_replace``, ``_asdict``, the namedtuple ``repr``, and
the class body's methods, properties and docstring), without ``collections`` and
without compiling code at run time; type checkers see typing's. :class:`suppress` is
``contextlib.suppress``. Nothing else lives here.
"""

from __future__ import annotations

from _operator import itemgetter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# what typing.NamedTuple refuses to let a class body overwrite, and copies never
_PROHIBITED = frozenset(
    {"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults"}
    | {"_make", "_replace", "_asdict", "_source"}
)
_SPECIAL = frozenset({"__module__", "__name__", "__qualname__", "__annotations__"})


def _values(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The field values of a call ``cls(*args, **kwargs)``, as namedtuple's ``__new__``."""
    fields: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]
    defaults: dict[str, Any] = cls._field_defaults  # type: ignore[attr-defined]
    name = cls.__name__
    if len(args) > len(fields):
        raise TypeError(f"{name}() takes {len(fields)} arguments but {len(args)} were given")
    values = list(args)
    for field in fields[len(args) :]:
        if field in kwargs:
            values.append(kwargs.pop(field))
        elif field in defaults:
            values.append(defaults[field])
        else:
            raise TypeError(f"{name}() missing required argument: {field!r}")
    for key in kwargs:
        what = "multiple values for argument" if key in fields else "an unexpected keyword argument"
        raise TypeError(f"{name}() got {what} {key!r}")
    return tuple(values)


class _Record(tuple):  # type: ignore[type-arg]
    """What every class built by :class:`NamedTuple` derives from (tuple behaviour)."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _field_defaults: dict[str, Any] = {}  # noqa: RUF012 (replaced per class)

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if kwargs or len(args) != len(cls._fields):
            args = _values(cls, args, kwargs)
        return tuple.__new__(cls, args)

    @classmethod
    def _make(cls, iterable: Any) -> Any:
        values = tuple(iterable)
        if len(values) != len(cls._fields):
            raise TypeError(f"expected {len(cls._fields)} arguments, got {len(values)}")
        return tuple.__new__(cls, values)

    def _replace(self, **changes: Any) -> Any:
        values = [changes.pop(f, v) for f, v in zip(self._fields, self, strict=True)]
        if changes:
            raise ValueError(f"got unexpected field names: {list(changes)!r}")
        return tuple.__new__(type(self), values)

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self, strict=True))

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={v!r}" for f, v in zip(self._fields, self, strict=True))
        return f"{type(self).__name__}({inner})"


class _NamedTupleMeta(type):
    def __new__(mcls, name: str, bases: tuple[type, ...], ns: dict[str, Any]) -> type:
        if ns.get("_lite_root"):
            return super().__new__(mcls, name, bases, ns)
        annotations = dict(ns.get("__annotations__", {}))
        fields = tuple(annotations)
        defaults = {f: ns[f] for f in fields if f in ns}
        if any(f not in defaults for f in fields[len(fields) - len(defaults) :]):
            raise TypeError(f"{name}: a field without a default follows one with a default")
        body: dict[str, Any] = {
            "__slots__": (),
            "__module__": ns["__module__"],
            "__qualname__": ns.get("__qualname__", name),
            "__annotations__": annotations,
            "__match_args__": fields,
            "_fields": fields,
            "_field_defaults": defaults,
        }
        for i, field in enumerate(fields):
            body[field] = property(itemgetter(i), doc=f"Alias for field number {i}")
        for key, value in ns.items():
            if key in _PROHIBITED:
                raise AttributeError(f"cannot overwrite NamedTuple attribute {key}")
            if key not in _SPECIAL and key not in fields:
                body[key] = value
        return type(name, (_Record,), body)


class NamedTuple(metaclass=_NamedTupleMeta):
    """Base of a class written as for ``typing.NamedTuple`` (see the module docstring)."""

    _lite_root = True


class suppress:
    """``contextlib.suppress``: a ``with`` block whose listed exceptions are swallowed."""

    def __init__(self, *exceptions: type[BaseException]) -> None:
        self._exceptions = exceptions

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, self._exceptions)
