"""Build matrices: one release, many device variants, the images of each component.

A matrix file (JSON, or TOML with the same structure) names the release once and,
per device variant (one base OS build of one hardware family), the base and new
image of every component and, for N->1 patches, the images earlier releases
installed::

    {"release": "26.1 (c)", "os_version": "26.1",
     "components": {"webkit": {"activation": "relaunch",
                               "cves": [{"id": "CVE-2026-1", "description": "..."}]}},
     "variants": [{"name": "phone-a17", "build": "23B85", "supplemental_build": "23B85c",
                   "images": {"webkit": {"base": "img/base.img", "new": "img/new.img"}},
                   "previous": {"26.1 (a)": {"webkit": "img/a.img"}}}]}

An image is a path (relative to the matrix file), any URL fsspec opens
(``s3://...``, with the matching fsspec backend installed), or
``{"url": ..., "size": N}`` to also demand a size. :func:`load_matrix` checks the
structure and :func:`check_images` that every file exists with the expected size;
both collect every problem and raise one :class:`~bsipatch.errors.MatrixError`
listing them. Nothing here diffs, seals or touches a repository.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bsipatch.errors import BsipatchError, MatrixError
from bsipatch.trust.manifest import ACTIVATIONS, Cve, check_build, release_slug

__all__ = [
    "ComponentSpec",
    "ImageRef",
    "Matrix",
    "VariantSpec",
    "check_images",
    "file_size",
    "is_url",
    "load_matrix",
    "parse_matrix",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(location: str) -> bool:
    """True for ``scheme://...`` locations (opened with fsspec), False for plain paths."""
    return bool(_URL.match(location)) and not location.startswith("file://")


def local_path(location: str) -> str:
    """A plain path for a path or ``file://`` URL."""
    return location[len("file://") :] if location.startswith("file://") else location


@dataclass(frozen=True)
class ImageRef:
    """Where an image is: an absolute path or a URL, and the size demanded (if any)."""

    url: str
    size: int | None = None


@dataclass(frozen=True)
class ComponentSpec:
    """A component the release patches, the same for every variant."""

    name: str
    activation: str
    cves: tuple[Cve, ...] = ()


@dataclass(frozen=True)
class VariantSpec:
    """One device variant: its base build, the build after install, its images.

    Attributes:
        images: component -> (base image, new image).
        previous: earlier release id -> component -> the image that release installed.
    """

    name: str
    build: str
    supplemental_build: str
    images: Mapping[str, tuple[ImageRef, ImageRef]]
    previous: Mapping[str, Mapping[str, ImageRef]] = field(default_factory=dict)


@dataclass(frozen=True)
class Matrix:
    """A whole build matrix (see the module docstring)."""

    release_id: str
    os_version: str
    components: tuple[ComponentSpec, ...]
    variants: tuple[VariantSpec, ...]
    source: str = "matrix"

    @property
    def builds(self) -> tuple[str, ...]:
        """The base builds of all variants, in matrix order."""
        return tuple(v.build for v in self.variants)

    def component(self, name: str) -> ComponentSpec:
        """The component called ``name`` (KeyError when absent)."""
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)


class _Problems:
    """Collects problems; :meth:`wrap` turns a library error into one."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, msg: str) -> None:
        self.items.append(msg)

    def check(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except BsipatchError as exc:
            self.add(str(exc))
            return None


def load_matrix(path: str | os.PathLike[str]) -> Matrix:
    """Read a ``.json`` or ``.toml`` matrix file; relative image paths are from its folder.

    Raises:
        MatrixError: the file cannot be read or parsed, or its structure is invalid
            (every problem listed).
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
        if p.suffix.lower() == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # the vendor extra installs tomli on Python 3.10
                import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
            doc = tomllib.loads(raw.decode("utf-8"))
        elif p.suffix.lower() == ".json":
            doc = json.loads(raw)
        else:
            raise MatrixError([f"{p} must end in .json or .toml"], str(p))
    except (OSError, ValueError) as exc:
        raise MatrixError([f"cannot read {p}: {exc}"], str(p)) from exc
    return parse_matrix(doc, base_dir=p.resolve().parent, source=str(p))


def parse_matrix(doc: Any, *, base_dir: Path, source: str = "matrix") -> Matrix:
    """Check a parsed matrix document and build the :class:`Matrix`.

    Raises:
        MatrixError: every structural problem found, one per line.
    """
    pr = _Problems()
    if not isinstance(doc, Mapping):
        raise MatrixError(["the matrix must be an object"], source)
    _unknown(pr, doc, {"release", "os_version", "components", "variants"}, "matrix")
    release_id = _str(pr, doc, "release", "matrix")
    os_version = _str(pr, doc, "os_version", "matrix")
    if release_id and os_version:
        slug = pr.check(release_slug, release_id)
        if slug is not None and not slug.startswith(f"{os_version}-"):
            pr.add(f"release {release_id!r} does not belong to os_version {os_version!r}")
    components = _components(pr, doc.get("components"))
    names = [c.name for c in components]
    variants: list[VariantSpec] = []
    raw_variants = doc.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        pr.add("matrix.variants must be a non-empty list")
        raw_variants = []
    for i, v in enumerate(raw_variants):
        spec = _variant(pr, v, i, names, base_dir)
        if spec is not None:
            variants.append(spec)
    for what in ("name", "build"):
        seen: set[str] = set()
        for v in variants:
            value = v.name if what == "name" else v.build
            if value in seen:
                pr.add(f"duplicate variant: {what} {value!r} is listed twice")
            seen.add(value)
    if pr.items:
        raise MatrixError(pr.items, source)
    return Matrix(release_id, os_version, tuple(components), tuple(variants), source)


def _unknown(pr: _Problems, d: Mapping[str, Any], known: set[str], what: str) -> None:
    for k in sorted(set(d) - known):
        pr.add(f"{what}: unknown field {k!r} (expected one of {', '.join(sorted(known))})")


def _str(pr: _Problems, d: Mapping[str, Any], key: str, what: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value:
        pr.add(f"{what}.{key} must be a non-empty string, found {value!r}")
        return ""
    return value


def _components(pr: _Problems, raw: Any) -> list[ComponentSpec]:
    if not isinstance(raw, Mapping) or not raw:
        pr.add("matrix.components must be a non-empty object (name -> activation, cves)")
        return []
    out = []
    for name, c in raw.items():
        what = f"component {name}"
        if not _NAME.match(str(name)):
            pr.add(f"{what}: not a valid component name")
            continue
        if not isinstance(c, Mapping):
            pr.add(f"{what} must be an object with activation and cves")
            continue
        _unknown(pr, c, {"activation", "cves"}, what)
        if c.get("activation") not in ACTIVATIONS:
            pr.add(f"{what}: activation must be relaunch or reboot, found {c.get('activation')!r}")
            continue
        cves = []
        for x in c.get("cves", []) if isinstance(c.get("cves", []), list) else [None]:
            if not isinstance(x, Mapping):
                pr.add(f"{what}: cves must be a list of {{id, description}} objects")
                continue
            cve = pr.check(lambda x=x: Cve(str(x.get("id")), str(x.get("description", ""))))
            if cve is not None:
                cves.append(cve)
        out.append(ComponentSpec(str(name), str(c["activation"]), tuple(cves)))
    return out


def _image(pr: _Problems, raw: Any, what: str, base_dir: Path) -> ImageRef | None:
    size = None
    if isinstance(raw, Mapping):
        _unknown(pr, raw, {"url", "size"}, what)
        size = raw.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            pr.add(f"{what}: size must be a positive integer, found {size!r}")
            return None
        raw = raw.get("url")
    if not isinstance(raw, str) or not raw:
        pr.add(f"{what} must be a path, a URL or {{url, size}}, found {raw!r}")
        return None
    if not is_url(raw):
        raw = str(base_dir / local_path(raw))
    return ImageRef(raw, size)


def _variant(pr: _Problems, v: Any, i: int, names: list[str], base_dir: Path) -> VariantSpec | None:
    if not isinstance(v, Mapping):
        pr.add(f"variants[{i}] must be an object")
        return None
    _unknown(pr, v, {"name", "build", "supplemental_build", "images", "previous"}, f"variants[{i}]")
    name = _str(pr, v, "name", f"variants[{i}]")
    what = f"variant {name or i}"
    build = pr.check(check_build, v.get("build"), f"{what}: build")
    supp = pr.check(check_build, v.get("supplemental_build"), f"{what}: supplemental_build")
    images: dict[str, tuple[ImageRef, ImageRef]] = {}
    raw_images = v.get("images")
    if not isinstance(raw_images, Mapping):
        pr.add(f"{what}: images must be an object (component -> {{base, new}})")
        raw_images = {}
    for comp in names:
        if comp not in raw_images:
            pr.add(f"{what}: no images for component {comp}")
    for comp, pair in raw_images.items():
        if comp not in names:
            pr.add(f"{what}: images for {comp!r}, which matrix.components does not list")
            continue
        if not isinstance(pair, Mapping):
            pr.add(f"{what}: images.{comp} must be {{base, new}}")
            continue
        _unknown(pr, pair, {"base", "new"}, f"{what}: images.{comp}")
        base = _image(pr, pair.get("base"), f"{what}: {comp} base image", base_dir)
        new = _image(pr, pair.get("new"), f"{what}: {comp} new image", base_dir)
        if base is not None and new is not None:
            images[comp] = (base, new)
    previous = _previous(pr, v.get("previous", {}), what, names, base_dir)
    if not name or build is None or supp is None:
        return None
    return VariantSpec(name, build, supp, images, previous)


def _previous(
    pr: _Problems, raw: Any, what: str, names: list[str], base_dir: Path
) -> dict[str, dict[str, ImageRef]]:
    if not isinstance(raw, Mapping):
        pr.add(f"{what}: previous must be an object (release id -> component -> image)")
        return {}
    out: dict[str, dict[str, ImageRef]] = {}
    for rid, comps in raw.items():
        if pr.check(release_slug, rid) is None:
            continue
        if not isinstance(comps, Mapping):
            pr.add(f"{what}: previous[{rid!r}] must be an object (component -> image)")
            continue
        out[rid] = {}
        for comp, img in comps.items():
            if comp not in names:
                pr.add(f"{what}: previous[{rid!r}] names {comp!r}, not in matrix.components")
                continue
            ref = _image(pr, img, f"{what}: {comp} image of {rid}", base_dir)
            if ref is not None:
                out[rid][comp] = ref
    return out


def file_size(url: str) -> int | None:
    """The size of the file at a path or URL; ``None`` when it does not exist."""
    if not is_url(url):
        p = Path(local_path(url))
        try:
            return p.stat().st_size if p.is_file() else None
        except FileNotFoundError:
            return None
    import fsspec  # type: ignore[import-untyped]  # the vendor extra

    fs, path = fsspec.core.url_to_fs(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return int(info["size"]) if info.get("type", "file") == "file" else None


def check_images(
    images: Iterable[tuple[str, ImageRef, int | None]], source: str = "matrix"
) -> None:
    """Demand every image exists with its size (the ref's, and ``expected`` when given).

    Args:
        images: ``(label, image, expected size or None)``; the label names the problem.

    Raises:
        MatrixError: every missing or wrongly sized file, one per line.
    """
    pr = _Problems()
    for label, ref, expected in images:
        try:
            size = file_size(ref.url)
        except (OSError, ValueError, ImportError) as exc:
            pr.add(f"{label}: cannot open {ref.url}: {exc}")
            continue
        if size is None:
            pr.add(f"{label}: {ref.url} does not exist or is not a file")
            continue
        for want, why in ((ref.size, "the matrix says"), (expected, "expected")):
            if want is not None and size != want:
                pr.add(f"{label}: {ref.url} is {size} bytes; {why} {want}")
        if size == 0:
            pr.add(f"{label}: {ref.url} is empty")
    if pr.items:
        raise MatrixError(pr.items, source)
