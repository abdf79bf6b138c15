"""Named SQL blocks from the `dispatcher/sql/*.sql` files, loaded once by name.

A block starts with a line `-- name: <name>`; its text runs to the next such
line. Comments inside a block are kept (PostgreSQL ignores them).
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import LiteralString

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split a queries file into {name: sql}. Duplicate names are an error."""
    blocks: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        name = m.group(1)
        if name in blocks:
            raise ValueError(f"duplicate query name {name!r}")
        body = text[m.end() : end].strip()
        if not body:
            raise ValueError(f"query {name!r} is empty")
        blocks[name] = body
    return blocks


@functools.cache
def _all() -> dict[str, str]:
    blocks: dict[str, str] = {}
    folder = resources.files("dispatcher").joinpath("sql")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, body in parse(entry.read_text("utf-8")).items():
                if name in blocks:
                    raise ValueError(f"query {name!r} is defined twice in sql/*.sql")
                blocks[name] = body
    return blocks


def query(name: str) -> LiteralString:
    """The SQL of the named block (a KeyError names a missing block)."""
    try:
        return _all()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in dispatcher/sql/*.sql") from None
