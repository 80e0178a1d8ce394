"""The dated catalog: ordering by date, per-build lookups, withdrawals, strict fields."""

import copy
import hashlib
from dataclasses import replace

import pytest

from bsipatch.errors import FormatError
from bsipatch.trust.catalog import Catalog, CatalogEntry


def entry(rid: str, seq: int, published: str, builds=("23B85",), withdrawn=False) -> CatalogEntry:
    slug = rid.replace(" (", "-").rstrip(")")
    return CatalogEntry(
        release_id=rid,
        os_version=rid.split(" ")[0],
        builds=builds,
        published=published,
        sequence=seq,
        manifest_path=f"releases/{slug}/manifest.json",
        manifest_sha256=hashlib.sha256(rid.encode()).hexdigest(),
        manifest_size=1000 + seq,
        withdrawn=withdrawn,
        components=("webkit",),
        cves=("CVE-2026-0001",),
    )


def sample() -> Catalog:
    return Catalog(
        version=7,
        expires="2026-12-28T00:00:00Z",
        releases=(
            entry("26.1 (c)", 3, "2026-12-10T00:00:00Z", withdrawn=True),
            entry("26.1 (a)", 1, "2026-11-01T00:00:00Z"),
            entry("26.2 (a)", 4, "2026-12-20T00:00:00Z", builds=("23C10",)),
            entry("26.1 (b)", 2, "2026-11-20T00:00:00Z", builds=("23B85", "23B86")),
        ),
    )


def test_releases_ordered_by_date_and_round_trip():
    cat = sample()
    assert [e.release_id for e in cat.releases] == ["26.1 (a)", "26.1 (b)", "26.1 (c)", "26.2 (a)"]
    assert Catalog.from_dict(cat.to_dict()) == cat
    assert cat.to_dict()["_type"] == "catalog"
    assert cat.max_sequence == 4


def test_for_build_and_latest_skip_withdrawn():
    cat = sample()
    assert [e.release_id for e in cat.for_build("23B85")] == ["26.1 (a)", "26.1 (b)", "26.1 (c)"]
    assert [e.release_id for e in cat.for_build("23B86")] == ["26.1 (b)"]
    assert cat.latest("23B85").release_id == "26.1 (b)"
    assert cat.latest("23B85", include_withdrawn=True).release_id == "26.1 (c)"
    assert cat.latest("23C10").release_id == "26.2 (a)"
    assert cat.latest("99Z99") is None
    assert cat.for_build("99Z99") == ()


def test_entry_lookup():
    cat = sample()
    assert cat.entry("26.1 (b)").sequence == 2
    assert cat.get("26.9 (z)") is None
    with pytest.raises(KeyError):
        cat.entry("26.9 (z)")


def test_duplicate_release_or_sequence_refused():
    e = entry("26.1 (a)", 1, "2026-11-01T00:00:00Z")
    with pytest.raises(FormatError, match="twice"):
        Catalog(version=1, expires="2026-12-28T00:00:00Z", releases=(e, replace(e, sequence=2)))
    other = entry("26.1 (b)", 1, "2026-11-02T00:00:00Z")
    with pytest.raises(FormatError, match="sequence"):
        Catalog(version=1, expires="2026-12-28T00:00:00Z", releases=(e, other))


def _bad(mutator):
    d = copy.deepcopy(sample().to_dict())
    mutator(d)
    return d


@pytest.mark.parametrize(
    "mutator",
    [
        lambda d: d.__setitem__("version", 0),
        lambda d: d.__setitem__("version", "7"),
        lambda d: d.__setitem__("expires", "tomorrow"),
        lambda d: d.__setitem__("_type", "release"),
        lambda d: d.__setitem__("extra", []),
        lambda d: d.pop("releases"),
        lambda d: d.__setitem__("releases", {}),
        lambda d: d["releases"][0].__setitem__("withdrawn", 0),
        lambda d: d["releases"][0].__setitem__("withdrawn", "false"),
        lambda d: d["releases"][0].__setitem__("manifest_size", 0),
        lambda d: d["releases"][0].__setitem__("manifest_sha256", "00"),
        lambda d: d["releases"][0].__setitem__("manifest_path", "../../etc/passwd"),
        lambda d: d["releases"][0].__setitem__("os_version", "26.2"),
        lambda d: d["releases"][0].__setitem__("cves", ["not-a-cve"]),
        lambda d: d["releases"][0].__setitem__("components", ["a/b"]),
        lambda d: d["releases"][0].__setitem__("builds", []),
        lambda d: d["releases"][0].pop("cves"),
        lambda d: d["releases"][0].__setitem__("note", "x"),
    ],
)
def test_invalid_catalog_refused(mutator):
    with pytest.raises(FormatError):
        Catalog.from_dict(_bad(mutator))


def test_empty_catalog_is_valid():
    cat = Catalog(version=1, expires="2026-12-28T00:00:00Z")
    assert Catalog.from_dict(cat.to_dict()) == cat
    assert cat.latest("23B85") is None and cat.max_sequence == 0
