"""The docs stay true: tests cited in docs/security.md exist; README commands parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from bsipatch.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_cited_in_security_md_exists():
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    current = None
    cited = []
    for m in re.finditer(r"`(tests/test_\w+\.py)::(\w+)`|`::(\w+)`", text):
        if m.group(1):
            current, name = m.group(1), m.group(2)
        else:
            name = m.group(3)
        assert current is not None, f"{name} cited before any file"
        cited.append((current, name))
    assert len(cited) > 20
    for path, name in cited:
        src = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"def {name}\b", src), f"{path}::{name} cited in security.md is missing"


def _readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            line = re.sub(r"^\w+=\$\(", "", line).replace("$ROOT", "ab" * 32)
            for part in re.split(r"&&|\|", line):
                words = shlex.split(part)
                if words[:1] == ["bsipatch"]:
                    commands.append(words[1:])
    return commands


@pytest.mark.parametrize("argv", _readme_commands(), ids=lambda a: " ".join(a[:2]))
def test_readme_commands_parse(argv):
    args = build_parser().parse_args(argv)
    assert callable(args.func)
