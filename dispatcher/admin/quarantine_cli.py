"""`dispatcher quarantine list|retry`: events stuck before fan-out.

Quarantined events are those whose fan-out exceeded statement_timeout even alone
(dispatcher/intake.py); unreadable ones wait in the outbox because the database role
cannot read them. dispatcher/cli.py calls `register`; the queries are quarantine.py's.
"""

from __future__ import annotations

import argparse

from dispatcher.admin import quarantine
from dispatcher.admin.commands import Sub, emit, int_arg, leaf, run_db
from dispatcher.admin.format import parse_uuid, table, when
from dispatcher.errors import ExitCode, InvalidInput
from dispatcher.settings import Settings

COLUMNS = (
    ("kind", "KIND"),
    ("event_id", "EVENT"),
    ("org_id", "ORG"),
    ("event_type", "TYPE"),
    ("times", "TIMES"),
    ("queued", "QUEUED"),
    ("error", "ERROR"),
)


def register(sub: Sub) -> None:
    p = sub.add_parser("quarantine", help="events that could not be fanned out")
    g = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = leaf(
        g,
        "list",
        _list,
        "quarantined events, and outbox events the database role cannot read",
    )
    q.add_argument("--limit", default="100", help="at most this many rows (default 100)")
    q = leaf(g, "retry", _retry, "put quarantined events back in the outbox")
    q.add_argument("ids", metavar="EVENT_ID", nargs="*", help="events to retry")
    q.add_argument("--all", action="store_true", help="every quarantined event")


def _list(args: argparse.Namespace, settings: Settings) -> int:
    limit = int_arg(args.limit, "--limit")

    rows = run_db(settings, lambda c: quarantine.list_stuck(c, limit=limit))
    for r in rows:
        r["queued"] = when(r["queued_at"])

    def human() -> str:
        return table(rows, COLUMNS) if rows else "nothing is quarantined or unreadable"

    emit(args, rows, human)
    return ExitCode.OK


def _retry(args: argparse.Namespace, settings: Settings) -> int:
    if bool(args.ids) == bool(args.all):
        raise InvalidInput("give the event ids to retry, or --all (not both)")
    ids = None if args.all else [parse_uuid(v, "EVENT_ID") for v in args.ids]

    n = run_db(settings, lambda c: quarantine.retry(c, ids))
    emit(args, {"retried": n}, lambda: f"put {n} event(s) back in the outbox")
    return ExitCode.OK
