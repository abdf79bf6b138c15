"""Start-up check: does the database role have every privilege the daemon needs?

``check_privileges(conn)`` raises PermissionDenied with one line naming each
missing privilege (and tables whose row-level security would hide rows from
the role), so a daemon started under a role that lacks a grant stops at once
with ExitCode.PERMISSION instead of failing later, query by query.

What it checks is read from ``sql/least_privilege.sql``, the script that grants it (its
header says why the daemon needs each grant): one list, never two to keep in step.
``needs_from_script`` reads the script's GRANT statements: those at top level are the core's
(``CORE``), those inside its ``DO`` blocks (granted when the host has the object) are the
integrations worker's (``INTEGRATIONS``). Not compared privilege by privilege: what the
host's ``publish_event`` needs to insert its event row (it runs with the caller's rights),
checked by calling it for real, with all six arguments, in a transaction that is rolled back
(``publish_event_refused``), so a host function that writes more columns than the script
grants is caught; EXECUTE on the dispatcher's own functions and the default privileges of
objects a later migration adds. The tables the daemon reads rows of (``READ_TABLES``, checked
for row-level security) are the host's tables it is granted SELECT on.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Literal

import orjson
import psycopg
from psycopg.rows import dict_row

from dispatcher.errors import PermissionDenied
from dispatcher.queries import query

__all__ = [
    "CORE",
    "INTEGRATIONS",
    "READ_TABLES",
    "Need",
    "check_privileges",
    "missing_privileges",
    "needs_from_script",
    "publish_event_refused",
]

SCRIPT = "dispatcher/sql/least_privilege.sql"


@dataclass(frozen=True, slots=True)
class Need:
    """One privilege: on a schema, a table, a column, a function, or on every table of a
    schema (kind "tables", name "*") but those ``excluded``."""

    kind: Literal["schema", "table", "column", "function", "tables"]
    schema: str
    name: str
    priv: str
    col: str | None = None
    args: tuple[str, ...] | None = None
    excluded: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "schema":
            return f"{self.priv} on schema {self.schema}"
        if self.kind == "function":
            return (
                f"{self.priv} on function {self.schema}.{self.name}({', '.join(self.args or ())})"
            )
        return f"{self.priv} on {self.schema}.{self.name}"


# GRANT <privileges> [(<columns>)] ON <object> TO dispatcher; and the same REVOKE ... FROM.
# Statements built at run time (EXECUTE format('... %I TO dispatcher', ...)) do not match:
# they end in a quote, not a semicolon.
_STATEMENT = re.compile(
    r"\b(?P<verb>GRANT|REVOKE)\s+(?P<privs>[A-Z]+(?:\s*,\s*[A-Z]+)*)\s*"
    r"(?:\((?P<cols>[^)]*)\))?\s+ON\s+(?P<target>[^;']+?)\s+(?:TO|FROM)\s+dispatcher\s*;"
)
_NAME = r"([a-z_][a-z0-9_]*)"
_SCHEMA = re.compile(rf"SCHEMA\s+{_NAME}")
_ALL_TABLES = re.compile(rf"ALL\s+TABLES\s+IN\s+SCHEMA\s+{_NAME}")
_FUNCTION = re.compile(rf"FUNCTION\s+{_NAME}\.{_NAME}\(([^)]*)\)")
_TABLE = re.compile(rf"{_NAME}\.{_NAME}")
# Granted, not compared (see the module's docstring): EXECUTE on every function of a schema,
# and ALTER DEFAULT PRIVILEGES (objects a later migration adds).
_NOT_COMPARED = re.compile(r"ALL\s+FUNCTIONS\s+IN\s+SCHEMA\s+\w+|TABLES|FUNCTIONS")
# What publish_event writes: the call checks it (publish_event_refused).
_CALLED = ("public", "events", "INSERT")


def needs_from_script(text: str) -> tuple[tuple[Need, ...], tuple[Need, ...]]:
    """(core, integrations): the privileges a least_privilege.sql script grants `dispatcher`.

    A ``REVOKE ALL`` starts from nothing and is skipped; another REVOKE of a table's
    privileges takes that table out of an ``ALL TABLES IN SCHEMA`` grant of the same ones.
    A GRANT in a form this function does not know is a ValueError, never skipped."""
    text = re.sub(r"--[^\n]*", "", text)
    core: list[Need] = []
    integrations: list[Need] = []
    revoked: set[tuple[str, str, str]] = set()  # (schema, table, priv)
    for block, part in enumerate(text.split("$$")):
        into = integrations if block % 2 else core  # odd: the body of a DO block
        for m in _STATEMENT.finditer(part):
            privs = [p.strip() for p in m["privs"].split(",")]
            target = " ".join(m["target"].split())
            if m["verb"] == "REVOKE":
                if privs != ["ALL"] and (table := _TABLE.fullmatch(target)):
                    revoked.update((table[1], table[2], p) for p in privs)
                continue
            into.extend(_needs(privs, m["cols"], target, m[0]))
    return _apply_revokes(core, revoked), _apply_revokes(integrations, revoked)


def _needs(privs: list[str], cols: str | None, target: str, statement: str) -> list[Need]:
    if _NOT_COMPARED.fullmatch(target):
        return []
    if m := _SCHEMA.fullmatch(target):
        return [Need("schema", m[1], m[1], p) for p in privs]
    if m := _ALL_TABLES.fullmatch(target):
        return [Need("tables", m[1], "*", p) for p in privs]
    if m := _FUNCTION.fullmatch(target):
        args = tuple(a.strip() for a in m[3].split(","))
        return [Need("function", m[1], m[2], p, args=args) for p in privs]
    if m := _TABLE.fullmatch(target):
        if cols is None:
            return [Need("table", m[1], m[2], p) for p in privs]
        if (m[1], m[2], *privs) == _CALLED:
            return []
        names = [c.strip() for c in cols.split(",")]
        return [Need("column", m[1], m[2], p, c) for p in privs for c in names]
    raise ValueError(f"{SCRIPT}: a grant the start-up check cannot read: {statement}")


def _apply_revokes(needs: list[Need], revoked: set[tuple[str, str, str]]) -> tuple[Need, ...]:
    out: list[Need] = []
    for need in needs:
        if need.kind == "tables":
            gone = sorted(t for s, t, p in revoked if s == need.schema and p == need.priv)
            need = Need("tables", need.schema, "*", need.priv, excluded=tuple(gone))
        out.append(need)
    return tuple(out)


PUBLISH_EVENT_ARGS = ("text", "uuid", "jsonb", "uuid", "jsonb", "uuid")

CORE, INTEGRATIONS = needs_from_script(
    resources.files("dispatcher").joinpath("sql/least_privilege.sql").read_text("utf-8")
)

# Tables the daemon reads rows of: row-level security must not hide any from it.
READ_TABLES = tuple(
    sorted(
        {
            f"{n.schema}.{n.name}"
            for n in CORE + INTEGRATIONS
            if n.kind == "table" and n.priv == "SELECT" and n.schema != "dispatcher"
        }
    )
)


async def missing_privileges(
    conn: psycopg.AsyncConnection[Any], *, integrations: bool = True
) -> list[str]:
    """Human-readable missing privileges ("UPDATE (status) on public.webhooks"), sorted."""
    needs = CORE + (INTEGRATIONS if integrations else ())
    payload = orjson.dumps([_as_json(n) for n in needs]).decode()
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query("preflight_missing_privileges"), {"needs": payload})
    rows = await cur.fetchall()
    columns: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    out: list[str] = []
    for row in rows:
        if row["kind"] == "column":
            columns[(row["priv"], row["schema"], row["name"])].append(row["col"])
            continue
        args = next((n.args for n in needs if n.kind == "function" and n.name == row["name"]), None)
        out.append(Need(row["kind"], row["schema"], row["name"], row["priv"], args=args).describe())
    for (priv, schema, name), cols in columns.items():
        out.append(f"{priv} ({', '.join(cols)}) on {schema}.{name}")
    return sorted(out)


async def row_security_blocks(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Tables whose row-level security would hide rows from the current role."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query("preflight_row_security"), {"tables": list(READ_TABLES)})
    return [row["tbl"] for row in await cur.fetchall()]


async def publish_event_refused(conn: psycopg.AsyncConnection[Any]) -> str | None:
    """Call the host's publish_event (6 arguments) as this role, then roll back: the refusal
    as one line, or None when it went through (or when there is no publish_event: the schema
    check reports a database that is behind). Only privilege refusals count; any other error
    (a missing default organization, say) already passed the privilege checks."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query("preflight_publish_event_present"))
    row = await cur.fetchone()
    if not row or not row["present"]:
        return None
    try:
        async with conn.transaction(force_rollback=True):
            await conn.execute(query("preflight_publish_event"))
    except psycopg.errors.InsufficientPrivilege as exc:
        return (
            f"what public.publish_event({', '.join(PUBLISH_EVENT_ARGS)}) needs "
            f"({exc.diag.message_primary})"
        )
    except psycopg.Error:
        return None
    return None


async def check_privileges(
    conn: psycopg.AsyncConnection[Any], *, integrations: bool = True
) -> None:
    """Raise PermissionDenied (one line) unless the role can do all the daemon does.

    ``integrations``: also check what the integrations worker needs (only for the
    integration tables that exist).
    """
    missing = await missing_privileges(conn, integrations=integrations)
    if integrations:
        refused = await publish_event_refused(conn)
        if refused is not None:
            missing.append(refused)
    hidden = await row_security_blocks(conn)
    if not missing and not hidden:
        return
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query("preflight_role"))
    row = await cur.fetchone()
    role = row["role"] if row else "?"
    problems: list[str] = []
    if missing:
        problems.append(f"lacks {'; '.join(missing)}")
    if hidden:
        problems.append(
            f"would see no rows of {', '.join(hidden)} (row-level security: give the role "
            "BYPASSRLS, or a policy naming it)"
        )
    raise PermissionDenied(
        f"the database role {role!r} {' and '.join(problems)}; "
        f"apply {SCRIPT} as the schema owner and grant the `dispatcher` role to {role!r}"
    )


def _as_json(need: Need) -> dict[str, Any]:
    data = asdict(need)
    data["args"] = list(need.args) if need.args is not None else None
    return data
