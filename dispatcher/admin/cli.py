"""Operator commands: webhooks (webhooks_cli.py), deliveries, dlq, recover, retry-config,
stats.

dispatcher/cli.py calls `register`. Every command prints a table or a key/value block, or
JSON with --json. Bad input raises InvalidInput/NotFound before anything is written; cli.main
prints it as one line and exits non-zero. Times and durations: see format.py.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from dispatcher.admin import api, sequences_cli, webhooks_cli
from dispatcher.admin.commands import (
    Sub,
    choice,
    emit,
    int_arg,
    leaf,
    opt_time,
    opt_uuid,
    positive,
    resumable,
    run_db,
)
from dispatcher.admin.format import TIME_HELP, age, fields, parse_time, parse_uuid, table, when
from dispatcher.errors import ExitCode, InvalidInput
from dispatcher.progress import Progress
from dispatcher.settings import Settings

DELIVERY_COLUMNS = (
    ("id", "ID"),
    ("created_at", "CREATED"),
    ("webhook_name", "WEBHOOK"),
    ("event_type", "EVENT"),
    ("status", "STATUS"),
    ("tries", "TRIES"),
    ("response_status", "HTTP"),
    ("error_message", "ERROR"),
)


def window(args: argparse.Namespace) -> api.Window:
    return api.Window(
        org=opt_uuid(args.org, "--org"),
        webhook=opt_uuid(args.webhook, "--webhook"),
        since=opt_time(args.since, "--since"),
        until=opt_time(args.until, "--until"),
    )


def with_tries(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "tries": f"{r['attempt_number']}/{r['max_attempts']}"} for r in rows]


# -- parser -------------------------------------------------------------------------


def _filters(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--org", metavar="ID", help="only this organization")
    p.add_argument("--webhook", metavar="ID", help="only this webhook")
    p.add_argument("--since", metavar="TIME", help=f"{what} created at or after TIME: {TIME_HELP}")
    p.add_argument("--until", metavar="TIME", help=f"{what} created before TIME")


def register(sub: Sub) -> None:
    webhooks_cli.register(sub)

    p = sub.add_parser("deliveries", help="list and inspect deliveries")
    g = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = leaf(g, "list", _deliveries_list, "list deliveries, newest first")
    _filters(q, "deliveries")
    q.add_argument("--status", help="pending, retrying, success, failed or dlq")
    q.add_argument("--limit", default="50", help="at most this many rows (default 50)")
    q.add_argument(
        "--after-seq",
        metavar="N",
        help="with --webhook: its deliveries numbered after N, lowest first (X-InTime-Sequence)",
    )
    q = leaf(g, "show", _deliveries_show, "one delivery: attempts, request headers, response")
    q.add_argument("id", metavar="ID")
    q = leaf(g, "replay", _deliveries_replay, "send a finished delivery again (new delivery)")
    q.add_argument("id", metavar="ID")

    p = sub.add_parser("dlq", help="list, retry or clear the dead-letter queue")
    g = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = leaf(g, "list", _dlq_list, "list dead-letter items, newest first")
    _filters(q, "items")
    q.add_argument("--limit", default="50", help="at most this many rows (default 50)")
    for name, verb in (
        ("retry", "put matching items back to pending (attempt 1, due now)"),
        ("clear", "set matching items to failed"),
    ):
        q = leaf(
            g,
            name,
            _dlq_retry if name == "retry" else _dlq_clear,
            f"{verb}; needs a filter or --all",
        )
        _filters(q, "items")
        q.add_argument("--all", action="store_true", help="every item of every organization")
        if name == "retry":
            q.add_argument("--batch", default="1000", help="items per transaction (1000)")

    p = leaf(
        sub,
        "recover",
        _recover,
        "re-deliver every event of a window that a webhook never received",
    )
    p.add_argument("--webhook", metavar="ID", required=True)
    p.add_argument("--since", metavar="TIME", required=True, help=f"window start: {TIME_HELP}")
    p.add_argument("--until", metavar="TIME", help="window end (default: now)")
    p.add_argument("--dry-run", action="store_true", help="only count what would be queued")
    p.add_argument("--batch", default="5000", help="events per transaction (about 5000)")

    p = sub.add_parser("retry-config", help="show or change an organization's retry settings")
    g = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = leaf(g, "show", _retry_config_show, "an organization's retry settings")
    q.add_argument("--org", metavar="ID", required=True)
    q = leaf(g, "set", _retry_config_set, "change an organization's retry settings")
    q.add_argument("--org", metavar="ID", required=True)
    span = {name: f"{low}-{high}" for name, (low, high) in api.RETRY_RANGES.items()}
    q.add_argument(
        "--max-retries", metavar="N", help=f"retries after the first attempt, {span['max_retries']}"
    )
    *others, last = api.RETRY_STRATEGIES
    q.add_argument("--strategy", help=f"{', '.join(others)} or {last}")
    q.add_argument("--base-delay", metavar="SECONDS", help=span["base_delay_seconds"])
    q.add_argument("--max-delay", metavar="SECONDS", help=span["max_delay_seconds"])
    q.add_argument("--jitter", action=argparse.BooleanOptionalAction, default=None)
    q.add_argument(
        "--dlq",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep exhausted deliveries in the dead-letter queue",
    )
    q.add_argument(
        "--retention-days", metavar="DAYS", help=f"DLQ retention, {span['dlq_retention_days']}"
    )

    p = leaf(sub, "stats", _stats, "webhooks, deliveries by status, DLQ, due work, outbox")
    p.add_argument("--org", metavar="ID", help="only this organization")


# -- deliveries --------------------------------------------------------------------


def _deliveries_list(args: argparse.Namespace, settings: Settings) -> int:
    if args.after_seq is not None:
        return sequences_cli.list_after(args, settings)
    w = window(args)
    status = choice(args.status, api.DELIVERY_STATUSES, "--status")
    limit = int_arg(args.limit, "--limit")
    rows = run_db(settings, lambda c: api.list_deliveries(c, w, status=status, limit=limit))
    emit(
        args,
        rows,
        lambda: table(with_tries(rows), DELIVERY_COLUMNS) if rows else "no deliveries match",
    )
    return ExitCode.OK


def _delivery_text(d: dict[str, Any]) -> str:
    parts = [
        fields(
            [
                ("delivery", d["id"]),
                ("organization", d["org_id"]),
                ("webhook", f"{d['webhook_name']} ({d['webhook_id']})"),
                ("event", d["event_type"]),
                ("event id", d["event_id"]),
                ("status", d["status"]),
                ("attempt", f"{d['attempt_number']} of {d['max_attempts']}"),
                ("next attempt", d["next_retry_at"]),
                ("created", d["created_at"]),
                ("finished", d["delivered_at"]),
                ("url", d["request_url"]),
                ("response", d["response_status"]),
                ("duration ms", d["duration_ms"]),
                ("error", d["error_message"]),
                ("error code", d["error_code"]),
            ]
        )
    ]
    cols = (
        ("attempt_number", "ATTEMPT"),
        ("attempted_at", "AT"),
        ("outcome", "OUTCOME"),
        ("response_status", "HTTP"),
        ("duration_ms", "MS"),
        ("error_message", "ERROR"),
    )
    attempts = d["attempts"]
    parts.append("attempts:\n" + (table(attempts, cols) if attempts else "  none recorded"))
    for title, key in (
        ("request headers", "request_headers"),
        ("response headers", "response_headers"),
    ):
        headers = d[key] or {}
        parts.append(f"{title}:\n" + (fields(sorted(headers.items())) if headers else "  none"))
    body = d["response_body"]
    if body:
        shown = body if len(body) <= 2000 else body[:2000] + f"… ({len(body)} characters)"
        parts.append("response body:\n" + shown)
    return "\n\n".join(parts)


def _deliveries_show(args: argparse.Namespace, settings: Settings) -> int:
    delivery = parse_uuid(args.id, "ID")
    row = run_db(settings, lambda c: api.get_delivery(c, delivery))
    emit(args, row, lambda: _delivery_text(row))
    return ExitCode.OK


def _deliveries_replay(args: argparse.Namespace, settings: Settings) -> int:
    delivery = parse_uuid(args.id, "ID")
    new = run_db(settings, lambda c: api.replay_delivery(c, delivery))
    emit(
        args,
        {"replayed": delivery, "delivery_id": new},
        lambda: f"queued delivery {new} (a replay of {delivery})",
    )
    return ExitCode.OK


# -- dlq ---------------------------------------------------------------------------


def _dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    w = window(args)
    limit = int_arg(args.limit, "--limit")
    rows = run_db(settings, lambda c: api.dlq_list(c, w, limit=limit))
    emit(
        args,
        rows,
        lambda: (
            table(with_tries(rows), DELIVERY_COLUMNS)
            if rows
            else "the dead-letter queue has no matching items"
        ),
    )
    return ExitCode.OK


def _dlq_retry(args: argparse.Namespace, settings: Settings) -> int:
    w = window(args)
    if args.all and w.filtered:
        raise InvalidInput("--all acts on every item: give it alone, or only filters")
    batch = positive(args.batch, "--batch")
    with resumable("dlq retry"):
        row = run_db(
            settings,
            lambda c: api.dlq_retry(
                c,
                w,
                everything=args.all,
                batch=batch,
                progress=lambda total: Progress("dlq_retry", total, unit="deliveries"),
            ),
        )

    def human() -> str:
        text = f"retried {row['retried']} DLQ item(s): back to pending, due now"
        if row["skipped_inactive"]:
            text += (
                f"\n{row['skipped_inactive']} item(s) stay in the DLQ because their webhook "
                "is not active: enable it (dispatcher webhooks enable ID), then retry"
            )
        return text

    emit(args, row, human)
    return ExitCode.OK


def _dlq_clear(args: argparse.Namespace, settings: Settings) -> int:
    w = window(args)
    if args.all and w.filtered:
        raise InvalidInput("--all acts on every item: give it alone, or only filters")
    cleared = run_db(settings, lambda c: api.dlq_clear(c, w, everything=args.all))
    emit(args, {"cleared": cleared}, lambda: f"cleared {cleared} DLQ item(s): now failed")
    return ExitCode.OK


# -- recover ------------------------------------------------------------------------


def _recover(args: argparse.Namespace, settings: Settings) -> int:
    webhook = parse_uuid(args.webhook, "--webhook")
    since = parse_time(args.since, "--since")
    until = opt_time(args.until, "--until")
    batch = positive(args.batch, "--batch")
    with resumable("recover"):
        row = run_db(
            settings,
            lambda c: api.recover(
                c,
                webhook,
                since,
                until,
                dry_run=args.dry_run,
                batch=batch,
                progress=lambda total: Progress("recover", total, unit="events"),
            ),
        )
    span = f"events from {when(since)} to {when(until or datetime.now(UTC))}"

    def human() -> str:
        verb = "would queue" if args.dry_run else "queued"
        text = f"{verb} {row['queued']} delivery(ies) to webhook {webhook} ({span})"
        if row["dlq_superseded"]:
            done = "would be" if args.dry_run else "were"
            text += (
                f"\n{row['dlq_superseded']} DLQ item(s) of those events {done} "
                "cleared (failed) so they are not sent twice"
            )
        return text

    emit(args, {**row, "dry_run": args.dry_run}, human)
    return ExitCode.OK


# -- retry-config -------------------------------------------------------------------


def _config_text(row: dict[str, Any]) -> str:
    text = fields(
        [(k.replace("_", " "), row[k]) for k in ("org_id", *api.RETRY_DEFAULTS, "updated_at")]
    )
    if not row["configured"]:
        text += "\n(no row for this organization: the host's defaults apply)"
    return text


def _retry_config_show(args: argparse.Namespace, settings: Settings) -> int:
    org = parse_uuid(args.org, "--org")
    row = run_db(settings, lambda c: api.get_retry_config(c, org))
    emit(args, row, lambda: _config_text(row))
    return ExitCode.OK


def _retry_config_set(args: argparse.Namespace, settings: Settings) -> int:
    org = parse_uuid(args.org, "--org")
    values: dict[str, Any] = {}
    for key, flag, raw in (
        ("max_retries", "--max-retries", args.max_retries),
        ("base_delay_seconds", "--base-delay", args.base_delay),
        ("max_delay_seconds", "--max-delay", args.max_delay),
        ("dlq_retention_days", "--retention-days", args.retention_days),
    ):
        if raw is not None:
            values[key] = int_arg(raw, flag)
    if args.strategy is not None:
        values["retry_strategy"] = args.strategy
    if args.jitter is not None:
        values["enable_jitter"] = args.jitter
    if args.dlq is not None:
        values["enable_dlq"] = args.dlq
    if not values:
        raise InvalidInput("nothing to set: give at least one of the options (see --help)")
    api.check_retry_values(values)
    row = run_db(settings, lambda c: api.set_retry_config(c, org, **values))
    emit(args, row, lambda: _config_text(row))
    return ExitCode.OK


# -- stats --------------------------------------------------------------------------


def _stats_text(s: dict[str, Any]) -> str:
    oldest = s["oldest_due_at"]
    due = f"{s['deliveries_due']}"
    if oldest is not None:
        due += f" (oldest due {age(datetime.now(UTC) - oldest)} ago)"
    return fields(
        [
            (
                "webhooks",
                f"{s['webhooks_active']} active, {s['webhooks_inactive']} inactive, "
                f"{s['webhooks_disabled']} disabled",
            ),
            (
                "deliveries",
                ", ".join(f"{s['deliveries_' + k]} {k}" for k in api.DELIVERY_STATUSES),
            ),
            ("due now", due),
            ("DLQ size", s["deliveries_dlq"]),
            ("outbox", f"{s['outbox_events']} event(s) waiting for fan-out"),
        ]
    )


def _stats(args: argparse.Namespace, settings: Settings) -> int:
    org = opt_uuid(args.org, "--org")
    row = run_db(settings, lambda c: api.stats(c, org))
    emit(args, {"org_id": org, **row}, lambda: _stats_text(row))
    return ExitCode.OK
