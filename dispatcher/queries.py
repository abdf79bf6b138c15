"""Named SQL blocks from `dispatcher/sql/queries.sql`, loaded once by name.

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
    text = resources.files("dispatcher").joinpath("sql/queries.sql").read_text("utf-8")
    return parse(text)


def query(name: str) -> LiteralString:
    """The SQL of the named block (a KeyError names a missing block)."""
    try:
        return _all()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/queries.sql") from None
