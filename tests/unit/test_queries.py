"""The SQL loader (dispatcher/queries.py) and the names the code asks it for.

Every `query("...")` name used in dispatcher/ is a block of dispatcher/sql/*.sql, and every
block is used by the code (or listed below with what uses it). Names reach `query()` as
literals, through a local variable, or through a helper whose parameter is handed on
(`admin._one(conn, "admin_webhook_get", ...)`); the source is read with `ast`, and a call
whose name cannot be followed back to string literals fails the test rather than being
skipped.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from dispatcher import queries
from dispatcher.queries import load, parse, query, strip_comments, variants

PACKAGE = Path(queries.__file__).parent

# Blocks no Python in dispatcher/ names, and who uses them instead.
USED_ELSEWHERE: dict[str, str] = {}


# -- the parser ----------------------------------------------------------------------------


def test_blocks_run_from_their_name_line_to_the_next() -> None:
    text = (
        "-- a file comment, before any block: not part of one\n"
        "-- name: first\n"
        "SELECT 1;\n"
        "-- a comment inside a block is kept\n"
        "\n"
        "-- name: second_2\n"
        "SELECT 2\n"
    )
    assert parse(text) == {
        "first": "SELECT 1;\n-- a comment inside a block is kept",
        "second_2": "SELECT 2",
    }


def test_a_name_line_must_stand_alone_and_be_lower_snake_case() -> None:
    text = "-- name: ok\nSELECT 1\n--name: squashed\n-- name: Upper\n  -- name: indented\n"
    blocks = parse(text)
    assert list(blocks) == ["ok"]  # the rest are comments inside `ok`
    assert "-- name: Upper" in blocks["ok"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- name: twice\nSELECT 1\n-- name: twice\nSELECT 2\n", "duplicate query name 'twice'"),
        ("-- name: hollow\n   \n-- name: full\nSELECT 1\n", "query 'hollow' is empty"),
    ],
)
def test_a_duplicate_or_empty_block_is_an_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(text)


# -- variants and comments (issue 12, lean plans) ------------------------------------------


MARKED = """\
SELECT a,
-- [full]
       b_full,
-- [lean]
       NULL AS b_lean,
-- [end]
       c
FROM t
  -- [full]
WHERE heavy
  -- [end]
"""


def test_variant_regions_give_a_full_and_a_lean_statement_from_one_text() -> None:
    assert variants("q", MARKED) == {
        "q": "SELECT a,\n       b_full,\n       c\nFROM t\nWHERE heavy",
        "q_lean": "SELECT a,\n       NULL AS b_lean,\n       c\nFROM t",
    }
    assert variants("plain", "SELECT 1 -- [full]") == {"plain": "SELECT 1 -- [full]"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- [full]\nSELECT 1\n", "not closed"),
        ("SELECT 1\n-- [end]\n", r"\[end\] outside"),
        ("-- [full]\n-- [full]\n-- [end]\n", r"\[full\] inside"),
        ("-- [lean]\n-- [lean]\n-- [end]\n", r"\[lean\] twice"),
        # a mistyped marker would be kept in both variants: refused, not taken as a comment
        ("-- [full]\nSELECT 1\n--[end]\n", "is not a region marker"),
        ("-- [Lean]\nSELECT 1\n-- [end]\n", "is not a region marker"),
        ("-- [full] heavy part\nSELECT 1\n-- [end]\n", "is not a region marker"),
    ],
)
def test_a_badly_nested_region_is_an_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        variants("q", text)


def test_comments_go_and_literals_stay_as_written() -> None:
    sql = (
        "-- leading comment\n"
        "SELECT 'a -- not a comment', E'it\\'s -- kept', 'it''s /* kept */',\n"
        '       "odd--name", $body$ -- kept\n  $$ too $body$,  -- gone\n'
        "  x /* gone /* nested */ still gone */ + $1,  y%(p)s\n"
        "\n"
        "FROM t-- gone\n"
    )
    assert strip_comments(sql) == (
        "SELECT 'a -- not a comment', E'it\\'s -- kept', 'it''s /* kept */',\n"
        '"odd--name", $body$ -- kept\n  $$ too $body$,\n'
        "x + $1, y%(p)s\n"
        "FROM t"
    )


@pytest.mark.parametrize("sql", ["SELECT 'open", "SELECT $x$ open", "SELECT /* open"])
def test_an_unterminated_literal_or_comment_is_an_error(sql: str) -> None:
    with pytest.raises(ValueError, match="unterminated"):
        strip_comments(sql)


def test_the_statements_sent_have_no_comments_and_both_variants_of_the_hot_ones() -> None:
    for name in ("delivery_fan_out", "delivery_record_outcomes"):
        full, lean = query(name), query(name + "_lean")
        assert "--" not in full and "--" not in lean
        assert len(lean) < len(full)
    assert "ordered_wait" in query("delivery_fan_out")
    assert "ordered_wait" not in query("delivery_fan_out_lean")
    assert "webhook_settings" not in query("delivery_fan_out_lean").split("picked AS")[1]
    assert "finals" in query("delivery_record_outcomes")
    assert "finals" not in query("delivery_record_outcomes_lean")


def test_a_missing_name_is_a_key_error_that_names_it() -> None:
    with pytest.raises(KeyError, match="no query named 'no_such_block'"):
        query("no_such_block")


def test_every_sql_file_parses_and_no_name_is_defined_in_two_files() -> None:
    seen: dict[str, str] = {}
    for path in _sql_files():
        for name in load(path.read_text("utf-8")):
            assert name not in seen, f"{name} is in both {seen[name]} and {path.name}"
            seen[name] = path.name
    assert seen.keys() == _blocks().keys()


# -- names used vs blocks defined ------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    name: str
    where: str  # file:line


@dataclass(frozen=True)
class Unresolved:
    where: str
    what: str


def _sql_files() -> list[Path]:
    return sorted((PACKAGE / "sql").glob("*.sql"))


def _blocks() -> dict[str, str]:
    """Every statement the loader makes: blocks, and the lean variants of marked ones."""
    blocks: dict[str, str] = {}
    for path in _sql_files():
        blocks.update(load(path.read_text("utf-8")))
    return blocks


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    args = fn.args
    names = [a.arg for a in (*args.posonlyargs, *args.args)]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return names


# helper name -> its parameters (position after self/cls, name) that hold a block name; by
# bare name across modules (admin/sequences.py calls admin/api.py's helpers)
Forwarders = dict[str, set[tuple[int, str]]]


class _Module:
    """One module's calls of query() and of helpers that hand a name on to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tree = ast.parse(path.read_text("utf-8"), str(path))
        self.uses: list[Use] = []
        self.unresolved: list[Unresolved] = []
        # each node's innermost enclosing function (absent: module level)
        self.enclosing: dict[ast.AST, ast.AST] = {}
        for fn in self.functions():  # outer functions come first in ast.walk's order
            for node in ast.walk(fn):
                if node is not fn:
                    self.enclosing[node] = fn

    def where(self, node: ast.AST) -> str:
        return f"{self.path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}"

    def functions(self) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
        return [
            n for n in ast.walk(self.tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ]

    def strings(self, expr: ast.expr, scope: ast.AST) -> list[str] | None:
        """The string literals `expr` can be (None: not only literals)."""
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return [expr.value]
        if isinstance(expr, ast.IfExp):
            body, orelse = self.strings(expr.body, scope), self.strings(expr.orelse, scope)
            return None if body is None or orelse is None else body + orelse
        if isinstance(expr, ast.Name):
            values: list[str] = []
            for node in ast.walk(scope):
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == expr.id for t in node.targets
                ):
                    found = self.strings(node.value, scope)
                    if found is None:
                        return None
                    values += found
            return values or None
        return None

    def find_helpers(self, forwarders: Forwarders) -> bool:
        """Add the functions here that hand a parameter on as a block name; True if any."""
        changed = False
        for fn in self.functions():
            params = _params(fn)
            for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call)):
                for arg in self._arguments(call, forwarders):
                    if isinstance(arg, ast.Name) and arg.id in params:
                        param = (params.index(arg.id), arg.id)
                        if param not in forwarders.setdefault(fn.name, set()):
                            forwarders[fn.name].add(param)
                            changed = True
        return changed

    def scan(self, forwarders: Forwarders) -> None:
        for call in (n for n in ast.walk(self.tree) if isinstance(n, ast.Call)):
            scope = self.enclosing.get(call, self.tree)
            handed_on = (
                {name for _, name in forwarders.get(scope.name, ())}
                if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef)
                else set()
            )
            for arg in self._arguments(call, forwarders):
                if isinstance(arg, ast.Name) and arg.id in handed_on:
                    continue  # resolved where the helper is called
                names = self.strings(arg, scope)
                if names is None:
                    self.unresolved.append(Unresolved(self.where(call), ast.unparse(call)))
                else:
                    self.uses += [Use(name, self.where(call)) for name in names]

    @staticmethod
    def _arguments(call: ast.Call, forwarders: Forwarders) -> list[ast.expr]:
        """The arguments of `call` that hold a block name, if it calls query() or a helper."""
        callee = _callee(call)
        if callee is None or callee not in forwarders:
            return []
        keywords = {kw.arg: kw.value for kw in call.keywords}
        found = []
        for index, name in sorted(forwarders[callee]):
            if name in keywords:
                found.append(keywords[name])
            elif index < len(call.args):
                found.append(call.args[index])
        return found


def _scan() -> tuple[list[Use], list[Unresolved]]:
    modules = [_Module(path) for path in sorted(PACKAGE.rglob("*.py"))]
    forwarders: Forwarders = {"query": {(0, "name")}}
    while any([m.find_helpers(forwarders) for m in modules]):
        pass  # a helper may hand the name on to another helper
    uses: list[Use] = []
    unresolved: list[Unresolved] = []
    for module in modules:
        module.scan(forwarders)
        uses += module.uses
        unresolved += module.unresolved
    return list(dict.fromkeys(uses)), unresolved


def test_every_name_passed_to_query_can_be_followed_back_to_literals() -> None:
    _uses, unresolved = _scan()
    assert unresolved == []


def test_the_scan_finds_the_names_each_way_they_reach_query() -> None:
    """Guards the scanner itself: a literal, a helper parameter (admin), two levels of
    helpers (admin._required -> _one), a conditional local (admin.dlq_clear), a method
    called on self (retention._drain) and a helper with two name parameters (reencrypt)."""
    names = {u.name for u in _scan()[0]}
    for name in (
        "delivery_fan_out",
        "admin_webhook_get",
        "admin_stats_all",
        "admin_dlq_clear_all",
        "admin_dlq_clear_org",
        "purge_dlq",
        "integ_config_batch",
        "integ_token_rewrite",
    ):
        assert name in names


def test_every_name_used_is_a_block_of_the_sql_files() -> None:
    blocks = _blocks()
    missing = [u for u in _scan()[0] if u.name not in blocks]
    assert missing == []


def test_every_block_is_used_by_the_code_or_listed_with_what_uses_it() -> None:
    used = {u.name for u in _scan()[0]}
    unused = sorted(set(_blocks()) - used - USED_ELSEWHERE.keys())
    assert unused == []
    # and the list holds no name the code uses, nor one that is gone
    assert sorted(USED_ELSEWHERE.keys() & used) == []
    assert sorted(USED_ELSEWHERE.keys() - _blocks().keys()) == []
