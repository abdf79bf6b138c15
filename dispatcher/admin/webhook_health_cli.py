"""`dispatcher webhooks health [WEBHOOK] [--org ID] [--json]`: endpoint health at a glance.

Reads dispatcher.webhook_health (0028_webhook_health.sql): through the org-scoped
dispatcher.webhook_health(org, webhook) when an organization or a webhook is named (a
webhook of another organization than --org is refused), the whole view otherwise.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from dispatcher.admin import api
from dispatcher.admin.commands import Sub, emit, leaf, opt_uuid, run_db
from dispatcher.admin.format import age, fields, parse_uuid, table, when
from dispatcher.errors import ExitCode
from dispatcher.settings import Settings


def add_parser(group: Sub) -> None:
    q = leaf(
        group,
        "health",
        _health,
        "per webhook: attempts and success rate (last hour, day), p50/p95 response time, "
        "last error, in flight, due backlog, held events, disabled since",
    )
    q.add_argument("id", metavar="WEBHOOK", nargs="?", help="only this webhook (all details)")
    q.add_argument("--org", metavar="ID", help="only this organization")


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def window(row: dict[str, Any], w: str) -> str:
    """`12 (91.7%)`: attempts in the window and the share that succeeded."""
    return f"{row[f'attempts_{w}']} ({rate(row[f'success_rate_{w}'])})"


def times(row: dict[str, Any], w: str) -> str:
    """`120/850ms`: p50/p95 response time in the window."""
    p50, p95 = row[f"p50_ms_{w}"], row[f"p95_ms_{w}"]
    return "-" if p50 is None else f"{p50}/{p95}ms"


def ago(value: datetime | None, now: datetime) -> str | None:
    return None if value is None else f"{when(value)} ({age(now - value)} ago)"


COLUMNS = (
    ("name", "NAME"),
    ("webhook_id", "ID"),
    ("status", "STATUS"),
    ("last_hour", "1H (OK)"),
    ("last_day", "24H (OK)"),
    ("times", "P50/P95 1H"),
    ("due", "DUE"),
    ("in_flight", "IN FLIGHT"),
    ("held", "HELD"),
    ("last_error", "LAST ERROR"),
)


def health_table(rows: list[dict[str, Any]]) -> str:
    return table(
        [
            {
                **r,
                "last_hour": window(r, "1h"),
                "last_day": window(r, "24h"),
                "times": times(r, "1h"),
            }
            for r in rows
        ],
        COLUMNS,
    )


def health_text(r: dict[str, Any], now: datetime) -> str:
    error = None
    if r["last_error"] is not None:
        error = f"{r['last_error']}, {ago(r['last_error_at'], now)}"
    return fields(
        [
            ("webhook", r["webhook_id"]),
            ("organization", r["org_id"]),
            ("name", r["name"]),
            ("status", r["status"]),
            ("disabled since", ago(r["disabled_since"], now)),
            ("consecutive failures", r["consecutive_failures"]),
            ("last hour", f"{window(r, '1h')} attempts (succeeded), p50/p95 {times(r, '1h')}"),
            ("last day", f"{window(r, '24h')} attempts (succeeded), p50/p95 {times(r, '24h')}"),
            ("last error", error),
            ("in flight", r["in_flight"]),
            ("retries waiting", r["retry_waiting"]),
            ("due now", r["due"]),
            ("oldest due", ago(r["oldest_due_at"], now)),
            ("held events", r["held"]),
            ("oldest held event", ago(r["oldest_held_at"], now)),
            ("last success", r["last_success_at"]),
        ]
    )


def _health(args: argparse.Namespace, settings: Settings) -> int:
    org = opt_uuid(args.org, "--org")
    webhook = None if args.id is None else parse_uuid(args.id, "WEBHOOK")
    rows = run_db(settings, lambda c: api.webhook_health(c, org=org, webhook=webhook))
    now = datetime.now(UTC)
    if webhook is not None:
        emit(args, rows[0], lambda: health_text(rows[0], now))
    else:
        emit(args, rows, lambda: health_table(rows) if rows else "no webhooks match")
    return ExitCode.OK
