"""Start-up check: does the database role have every privilege the daemon needs?

``check_privileges(conn)`` raises PermissionDenied with one line naming each
missing privilege (and tables whose row-level security would hide rows from
the role), so a daemon started under a role that lacks a grant stops at once
with ExitCode.PERMISSION instead of failing later, query by query. The grants
it expects are those of ``sql/least_privilege.sql``.

The privileges, and why the daemon needs them:

- USAGE on schemas ``public`` and ``dispatcher``.
- ``public.events``: SELECT (fan-out reads the event).
- ``public.webhooks``: SELECT; UPDATE of the counter columns and ``status``
  (failure counts, last_* timestamps, 410 Gone disables).
- ``public.webhook_deliveries``: SELECT, INSERT (fan-out), UPDATE (claims and
  outcomes), DELETE (retention).
- ``public.integration_retry_config``: SELECT.
- every table of schema ``dispatcher``: SELECT, INSERT, UPDATE, DELETE (only
  SELECT on ``schema_migrations``: ``migrate`` runs as the owner).
- with integrations enabled and their tables present: SELECT on the four
  integration tables, UPDATE of the columns the worker writes, INSERT and
  DELETE on ``integration_health_logs`` (and UPDATE of its ``id``: the purge
  locks rows FOR UPDATE, which needs UPDATE on some column), EXECUTE on
  ``publish_event``, and whatever the host's ``publish_event`` needs to insert its event
  row (it runs with the caller's rights): checked by calling it for real, with all six
  arguments, in a transaction that is rolled back (``publish_event_refused``), not by
  comparing column lists, so a host function that writes more columns than ours is caught.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson
import psycopg
from psycopg.rows import dict_row

from dispatcher.errors import PermissionDenied
from dispatcher.queries import query

__all__ = [
    "CORE",
    "INTEGRATIONS",
    "Need",
    "check_privileges",
    "missing_privileges",
    "publish_event_refused",
]

SCRIPT = "dispatcher/sql/least_privilege.sql"


@dataclass(frozen=True, slots=True)
class Need:
    kind: Literal["schema", "table", "column", "function"]
    schema: str
    name: str
    priv: str
    col: str | None = None
    args: tuple[str, ...] | None = None

    def describe(self) -> str:
        if self.kind == "schema":
            return f"{self.priv} on schema {self.schema}"
        if self.kind == "function":
            return (
                f"{self.priv} on function {self.schema}.{self.name}({', '.join(self.args or ())})"
            )
        return f"{self.priv} on {self.schema}.{self.name}"


def _columns(table: str, priv: str, *cols: str, schema: str = "public") -> tuple[Need, ...]:
    return tuple(Need("column", schema, table, priv, col) for col in cols)


WEBHOOK_COLUMNS = (
    "consecutive_failures",
    "last_triggered_at",
    "last_success_at",
    "last_failure_at",
    "status",
)

CORE: tuple[Need, ...] = (
    Need("schema", "public", "public", "USAGE"),
    Need("schema", "dispatcher", "dispatcher", "USAGE"),
    Need("table", "public", "events", "SELECT"),
    Need("table", "public", "webhooks", "SELECT"),
    *_columns("webhooks", "UPDATE", *WEBHOOK_COLUMNS),
    *(
        Need("table", "public", "webhook_deliveries", p)
        for p in ("SELECT", "INSERT", "UPDATE", "DELETE")
    ),
    Need("table", "public", "integration_retry_config", "SELECT"),
)

PUBLISH_EVENT_ARGS = ("text", "uuid", "jsonb", "uuid", "jsonb", "uuid")

INTEGRATIONS: tuple[Need, ...] = (
    Need("table", "public", "integrations", "SELECT"),
    *_columns(
        "integrations",
        "UPDATE",
        "status",
        "error_message",
        "error_count",
        "health_status",
        "last_health_check",
    ),
    Need("table", "public", "integration_oauth_tokens", "SELECT"),
    *_columns(
        "integration_oauth_tokens",
        "UPDATE",
        "access_token",
        "refresh_token",
        "token_type",
        "scope",
        "expires_at",
        "refresh_expires_at",
        "raw_token_response",
        "last_refreshed_at",
        "last_used_at",
        "status",
    ),
    *(
        Need("table", "public", "integration_health_logs", p)
        for p in ("SELECT", "INSERT", "DELETE")
    ),
    # the purge's FOR UPDATE SKIP LOCKED needs UPDATE on at least one column
    *_columns("integration_health_logs", "UPDATE", "id"),
    Need("table", "public", "integration_failover_config", "SELECT"),
    *_columns(
        "integration_failover_config",
        "UPDATE",
        "current_active",
        "last_failover_at",
        "last_recovery_at",
        "failover_count",
    ),
    Need("function", "public", "publish_event", "EXECUTE", args=PUBLISH_EVENT_ARGS),
    # What publish_event itself needs (INSERT on the columns the host's function writes) is
    # not listed: publish_event_refused() calls it for real and rolls back.
)

# Tables the daemon reads rows of: row-level security must not hide any from it.
READ_TABLES = (
    "public.events",
    "public.webhooks",
    "public.webhook_deliveries",
    "public.integration_retry_config",
    "public.integrations",
    "public.integration_oauth_tokens",
    "public.integration_health_logs",
    "public.integration_failover_config",
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
