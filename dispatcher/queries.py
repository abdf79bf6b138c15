"""Named SQL blocks from the `dispatcher/sql/*.sql` files, loaded once by name.

A block starts with a line `-- name: <name>`; its text runs to the next such
line. The text sent to the server has its comments taken out (`strip_comments`:
string literals, quoted identifiers and dollar-quoted bodies are kept as they are).

A block may hold variant regions, each between whole lines (issue 12, lean plans)::

    -- [full]
    ...only in <name>...
    -- [lean]
    ...only in <name>_lean...
    -- [end]

(either part may be left out: `-- [full]` ... `-- [end]` is cut from the lean variant).
Such a block gives two statements from one text: `<name>`, the full one, and
`<name>_lean`, without the parts the common case does not need.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import LiteralString

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_MARK = re.compile(r"^\s*-- \[(full|lean|end)\]\s*$")
_NEAR_MARK = re.compile(r"^\s*--\s*\[")  # a line meant as a marker, maybe mistyped
LEAN = "_lean"


def parse(text: str) -> dict[str, str]:
    """Split a queries file into {name: sql}, as written. Duplicate names are an error."""
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


def variants(name: str, body: str) -> dict[str, str]:
    """{name: full text} or, for a block with variant regions, also {name_lean: lean text}
    (marker lines dropped; comments still in)."""
    keep: dict[str, list[str]] = {"full": [], "lean": []}
    region: str | None = None
    marked = False
    for line in body.splitlines():
        m = _MARK.match(line)
        if m is None and _NEAR_MARK.match(line):
            raise ValueError(
                f"query {name!r}: {line.strip()!r} is not a region marker "
                "(-- [full], -- [lean] or -- [end], alone on its line)"
            )
        if m is None:
            for variant, lines in keep.items():
                if region is None or region == variant:
                    lines.append(line)
            continue
        marked = True
        mark = m.group(1)
        if mark == "end":
            if region is None:
                raise ValueError(f"query {name!r}: [end] outside a region")
            region = None
        elif mark == "full":
            if region is not None:
                raise ValueError(f"query {name!r}: [full] inside a region")
            region = "full"
        else:
            if region == "lean":
                raise ValueError(f"query {name!r}: [lean] twice in a region")
            region = "lean"
    if region is not None:
        raise ValueError(f"query {name!r}: a region is not closed by [end]")
    if not marked:
        return {name: body}
    return {name: "\n".join(keep["full"]), name + LEAN: "\n".join(keep["lean"])}


_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


def strip_comments(sql: str) -> str:
    """`sql` without its comments (`--` to the end of the line, `/* */`, nested), and each
    run of whitespace outside literals as one space, or one newline when it held one.
    Single-quoted strings (E'' escapes too), quoted identifiers and dollar-quoted bodies
    are copied unchanged."""
    out: list[str] = []
    i, n = 0, len(sql)
    pending = ""  # whitespace (or a comment) seen since the last token: " " or "\n"

    def flush() -> None:
        nonlocal pending
        if pending and out:
            out.append(pending)
        pending = ""

    while i < n:
        c = sql[i]
        if c.isspace():
            pending = "\n" if c == "\n" or pending == "\n" else " "
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j  # the newline itself is whitespace
            pending = pending or " "
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            if depth:
                raise ValueError("unterminated /* comment")
            pending = pending or " "
        elif c == "'" or c == '"':
            # E'...' (the E was copied as part of the previous token): backslash escapes
            escapes = (
                c == "'"
                and bool(out)
                and not pending
                and out[-1][-1:] in ("E", "e")
                and (len(out[-1]) < 2 or not (out[-1][-2].isalnum() or out[-1][-2] == "_"))
            )
            j = i + 1
            while True:
                if j >= n:
                    raise ValueError(f"unterminated {c} literal")
                if escapes and sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == c:
                    if sql.startswith(c, j + 1):  # a doubled quote
                        j += 2
                        continue
                    break
                j += 1
            flush()
            out.append(sql[i : j + 1])
            i = j + 1
        elif c == "$" and (m := _DOLLAR.match(sql, i)) and not _in_word(out, pending):
            close = sql.find(m.group(0), m.end())
            if close < 0:
                raise ValueError(f"unterminated {m.group(0)} body")
            flush()
            out.append(sql[i : close + len(m.group(0))])
            i = close + len(m.group(0))
        else:
            j = i + 1
            while j < n and not (
                sql[j].isspace() or sql[j] in "'\"$" or sql.startswith(("--", "/*"), j)
            ):
                j += 1
            if sql[i:j] == "":  # pragma: no cover - one character at least
                j = i + 1
            flush()
            out.append(sql[i:j])
            i = j
    return "".join(out)


def _in_word(out: list[str], pending: str) -> bool:
    """A `$` right after an identifier character is part of it (or a $n parameter)."""
    if pending or not out:
        return False
    last = out[-1][-1:]
    return last.isalnum() or last == "_"


def load(text: str) -> dict[str, str]:
    """The statements of a queries file as sent: variants made, comments taken out."""
    out: dict[str, str] = {}
    for name, body in parse(text).items():
        for variant, sql in variants(name, body).items():
            if variant in out:
                raise ValueError(f"duplicate query name {variant!r}")
            out[variant] = strip_comments(sql)
    return out


@functools.cache
def _all() -> dict[str, str]:
    blocks: dict[str, str] = {}
    folder = resources.files("dispatcher").joinpath("sql")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, body in load(entry.read_text("utf-8")).items():
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
