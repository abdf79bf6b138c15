"""docs/architecture.md's "Code map" names every module of dispatcher/, in its wing, and nothing
that is gone: a reader can find the module for any step from the map alone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "dispatcher"


def code_map() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    start = text.index("## Code map")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def modules() -> set[str]:
    """Every module, as the map spells it: its path below dispatcher/ ("admin/api.py")."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        found.add(path.relative_to(PACKAGE).as_posix())
    return found


def mapped() -> set[str]:
    """The modules of the map's tables: the wing heading gives the folder."""
    names: set[str] = set()
    folder = ""
    for line in code_map().splitlines():
        wing = re.search(r"\(`dispatcher/(\w+)/`\)", line)
        if line.startswith("**"):
            folder = f"{wing.group(1)}/" if wing else ""
        row = re.match(r"\| `([\w/]+\.py)` \|", line)
        if row:
            names.add(folder + row.group(1))
    return names


def test_every_module_is_on_the_code_map() -> None:
    missing = modules() - mapped()
    assert not missing, f"add these to the Code map in docs/architecture.md: {sorted(missing)}"


def test_the_code_map_names_no_module_that_is_gone() -> None:
    gone = mapped() - modules()
    assert not gone, f"the Code map names modules that do not exist: {sorted(gone)}"


def test_each_module_is_on_the_map_once() -> None:
    rows = re.findall(r"^\| `([\w/]+\.py)` \|", code_map(), flags=re.M)
    assert len(rows) == len(mapped()), "a module has two rows on the Code map"
