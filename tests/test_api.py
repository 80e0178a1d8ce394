"""The top-level library API as a user meets it: names, shapes, types, reprs."""

from __future__ import annotations

import importlib.util
import inspect
import io
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

import bsipatch
from bsipatch import errors, hazmat

REPO = Path(__file__).resolve().parent.parent
OLD = b"".join(b"block %06d of the old image\n" % i for i in range(4000))
NEW = OLD[:30000] + b"a security fix" + OLD[30000:70000] + OLD[70100:]


def test_bytes_in_bytes_out_round_trip() -> None:
    patch = bsipatch.diff(OLD, NEW)
    assert isinstance(patch, bytes)
    assert patch.startswith(b"BSIPATCH")
    assert len(patch) < len(NEW) // 10
    assert bsipatch.apply(OLD, patch) == NEW
    classic = bsipatch.diff(OLD, NEW, format="bsdiff40")
    assert classic.startswith(b"BSDIFF40")
    assert bsipatch.apply(OLD, classic) == NEW


def test_bytes_shape_and_path_shape_make_the_same_patch(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(OLD)
    (tmp_path / "new").write_bytes(NEW)
    info = bsipatch.diff(tmp_path / "old", tmp_path / "new", tmp_path / "p", threads=1)
    assert isinstance(info, bsipatch.PatchInfo)
    assert (tmp_path / "p").read_bytes() == bsipatch.diff(OLD, NEW, threads=1)
    got = bsipatch.apply(tmp_path / "old", tmp_path / "p", tmp_path / "out")
    assert got.new_size == len(NEW)
    assert (tmp_path / "out").read_bytes() == NEW
    # file objects in, file object out
    out = io.BytesIO()
    bsipatch.apply(OLD, io.BytesIO((tmp_path / "p").read_bytes()), out)
    assert out.getvalue() == NEW


def test_everyday_apply_checks_the_base_and_has_no_switches() -> None:
    patch = bsipatch.diff(OLD, NEW)
    wrong = OLD[:-1] + b"?"
    with pytest.raises(errors.WrongBaseImage):
        bsipatch.apply(wrong, patch)
    for switch in ("verify_old", "verify_new", "provenance"):
        assert switch not in inspect.signature(bsipatch.apply).parameters
        with pytest.raises(TypeError):
            bsipatch.apply(OLD, patch, **{switch: False})  # type: ignore[call-overload]


def test_hazmat_apply_exposes_the_switches_explicitly(tmp_path: Path) -> None:
    patch = bsipatch.diff(OLD, NEW)
    params = inspect.signature(hazmat.apply).parameters
    # no defaults: a caller has to say which checks it turns off
    assert params["verify_old"].default is inspect.Parameter.empty
    assert params["verify_new"].default is inspect.Parameter.empty
    hazmat.apply(OLD, patch, tmp_path / "out", verify_old=False, verify_new=True)
    assert (tmp_path / "out").read_bytes() == NEW
    # with the old-image check off, a wrong base of the right size gets as far as the
    # output check, which still refuses it
    wrong = bytearray(OLD)
    wrong[100] ^= 1
    with pytest.raises(errors.BsipatchError):
        hazmat.apply(bytes(wrong), patch, tmp_path / "o2", verify_old=False, verify_new=True)
    assert not (tmp_path / "o2").exists()


def test_reprs_show_digests_as_hex() -> None:
    info = bsipatch.read_patch_info(bsipatch.diff(OLD, NEW))
    text = repr(info)
    assert info.new_sha256.hex() in text
    assert "b'" not in text and 'b"' not in text
    seal = bsipatch.seal_image(NEW[: 8 * 4096], salt=b"\x01" * 32)
    assert repr(seal).startswith(f"Seal(root_hash='{seal.root_hash.hex()}', salt='{'01' * 32}'")


IMPORT_ORDERS = [
    "",
    "import bsipatch.delta.apply",
    "import bsipatch.delta.diff",
    "from bsipatch.delta.apply import apply",
    "from bsipatch.delta import diff, apply",
    "from bsipatch import apply",
    "from bsipatch import diff, apply; import bsipatch.api, bsipatch.hazmat",
    "import bsipatch.cli.main",
]


@pytest.mark.parametrize("before", IMPORT_ORDERS)
def test_diff_and_apply_are_callables_whatever_was_imported_before(before: str) -> None:
    code = (
        f"{before}\nimport bsipatch\n"
        "assert callable(bsipatch.diff) and callable(bsipatch.apply), "
        "(bsipatch.diff, bsipatch.apply)\n"
        "assert bsipatch.diff.__module__ == bsipatch.apply.__module__ == 'bsipatch.api'\n"
        "p = bsipatch.diff(b'x' * 5000, b'x' * 4000 + b'y' * 1000)\n"
        "assert bsipatch.apply(b'x' * 5000, p) == b'x' * 4000 + b'y' * 1000\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def _mentions_any(hint: object) -> bool:
    """``Any`` as the type or inside it (numpy's own generic parameters aside)."""
    if hint is typing.Any:
        return True
    if typing.get_origin(hint) is np.ndarray:
        return False
    return any(_mentions_any(a) for a in typing.get_args(hint))


def _names_for_hints() -> dict[str, object]:
    # annotations may name types imported only for type checking: resolve them with
    # every loaded bsipatch module's names
    ns: dict[str, object] = {}
    for name, mod in sorted(sys.modules.items()):
        if name == "bsipatch" or name.startswith("bsipatch."):
            ns.update({k: v for k, v in vars(mod).items() if not k.startswith("__")})
    return ns


def test_exports_are_real_typed_names_without_any() -> None:
    assert set(bsipatch.__all__) <= set(dir(bsipatch))
    for name in bsipatch.__all__:
        obj = getattr(bsipatch, name)
        assert obj is not None, name
        if inspect.ismodule(obj) or name == "__version__":
            continue
        if inspect.isclass(obj):
            targets = [obj.__init__]
        else:
            targets = [obj, *typing.get_overloads(obj)] if sys.version_info >= (3, 11) else [obj]
        for fn in targets:
            ns = {**_names_for_hints(), **vars(sys.modules[fn.__module__])}
            try:
                hints = typing.get_type_hints(fn, ns)
            except NameError:  # a name imported only for type checkers: read the text
                raw = {k: str(v) for k, v in fn.__annotations__.items()}
                assert "return" in raw or fn is object.__init__, f"{name}: no return annotation"
                bad = [k for k, v in raw.items() if re.search(r"\bAny\b", v)]
                assert not bad, f"bsipatch.{name}: Any in the signature ({bad})"
                continue
            if fn is not object.__init__:
                assert "return" in hints, f"{name}: {fn} has no return annotation"
            bad = [k for k, h in hints.items() if _mentions_any(h)]
            assert not bad, f"bsipatch.{name}: Any in the signature ({bad})"


def test_init_type_checking_imports_match_lazy_exports() -> None:
    # mypy reads the TYPE_CHECKING imports, the runtime the lazy table: they must agree
    src = (REPO / "bsipatch" / "__init__.py").read_text()
    block = src.split("if TYPE_CHECKING:", 1)[1].split("\n\n", 1)[0]
    imported = set(re.findall(r"import (?:\w+ as )?(\w+)", block))
    imported |= set(re.findall(r"(\w+) as \1", block))
    assert imported == set(bsipatch.__all__) - {"__version__"}


@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None and not os.environ.get("CI"), reason="no mypy"
)
def test_mypy_strict_catches_misuse_of_the_api(tmp_path: Path) -> None:
    good = tmp_path / "good.py"
    good.write_text(
        "import io\nimport bsipatch\nfrom bsipatch import hazmat\n\n"
        "patch: bytes = bsipatch.diff(b'old', b'new')\n"
        "new: bytes = bsipatch.apply(b'old', patch)\n"
        "info: bsipatch.PatchInfo = bsipatch.diff('old.img', 'new.img', 'p.bsipatch')\n"
        "size: int = bsipatch.apply('old.img', 'p.bsipatch', io.BytesIO()).new_size\n"
        "hazmat.apply('old.img', patch, 'out.img', verify_old=False, verify_new=True)\n"
        "seal: bsipatch.Seal = bsipatch.seal_image('img')\n"
        "digest: bytes = bsipatch.sha256(b'x')\n"
    )
    bad_lines = {
        "out: bytes = bsipatch.apply('old.img', 'p', 'out.img')": "assignment",
        "bsipatch.apply(b'old', b'p', verify_old=False)": "call-overload",
        "bsipatch.diff(1, 2)": "call-overload",
        "bsipatch.no_such_function()": "attr-defined",
        "n: int = bsipatch.diff(b'a', b'b').new_size": "attr-defined",
        "hazmat.apply(b'old', b'p', 'out.img')": "call-arg",
    }
    bad = tmp_path / "bad.py"
    bad.write_text("import bsipatch\nfrom bsipatch import hazmat\n\n" + "\n".join(bad_lines) + "\n")
    env = dict(os.environ, MYPYPATH=str(REPO))
    cmd = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent"]
    ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    res = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, env=env, cwd=tmp_path)
    errors_by_line: dict[int, str] = {}
    for m in re.finditer(r"bad\.py:(\d+): error: .*\[([\w-]+)\]", res.stdout):
        errors_by_line.setdefault(int(m.group(1)), m.group(2))
    expected = {i + 4: code for i, code in enumerate(bad_lines.values())}
    assert errors_by_line == expected, res.stdout
