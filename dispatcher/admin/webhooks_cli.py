"""`dispatcher webhooks list|show|health|add|enable|disable|discard-hold|rotate-secret|test`
(`set` and `replay`: dispatcher/admin/sequences_cli.py).

Secrets and custom header values are hidden unless --show-secret; `add` and
`rotate-secret` print the new secret once, because the receiver needs it.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from dispatcher.admin import api, sequences_cli, webhook_health_cli
from dispatcher.admin.commands import Sub, choice, emit, leaf, opt_uuid, run_db, warn
from dispatcher.admin.format import fields, parse_duration, parse_uuid, table, when
from dispatcher.errors import ExitCode, InvalidInput
from dispatcher.settings import Settings


def register(sub: Sub) -> None:
    p = sub.add_parser(
        "webhooks", help="list, show, health, add, enable, disable, rotate, test webhooks"
    )
    g = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = leaf(g, "list", _list, "list webhooks (soft-deleted ones are left out)")
    q.add_argument("--org", metavar="ID", help="only this organization")
    q.add_argument("--status", help="only active, inactive or disabled webhooks")
    q = leaf(g, "show", _show, "one webhook, with its rotation state")
    q.add_argument("id", metavar="ID")
    q.add_argument("--show-secret", action="store_true", help="print the secret and headers")
    webhook_health_cli.add_parser(g)
    q = leaf(g, "add", _add, "create a webhook (prints its secret once)")
    q.add_argument("--org", metavar="ID", required=True)
    q.add_argument("--name", required=True, help="up to 100 characters")
    q.add_argument("--url", required=True, help="http(s) URL, checked by the SSRF guard")
    q.add_argument(
        "--events",
        action="append",
        required=True,
        metavar="PATTERNS",
        help="comma-separated event types or patterns (job.created, job.*, *); may be repeated",
    )
    q.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a custom request header; may be repeated",
    )
    q.add_argument("--description")
    q.add_argument("--secret", help="64 lowercase hex characters (default: generated)")
    q.add_argument("--inactive", action="store_true", help="create it switched off")
    q = leaf(
        g,
        "enable",
        _enable,
        "set active (resets consecutive failures); a disabled webhook's held events "
        "and failing streak are delivered",
    )
    q.add_argument("id", metavar="ID")
    q = leaf(g, "disable", _disable, "set inactive (switched off by a person)")
    q.add_argument("id", metavar="ID")
    q = leaf(
        g,
        "discard-hold",
        _discard_hold,
        "throw away the events held for a disabled webhook (and end its streak) instead "
        "of delivering them when it is enabled",
    )
    q.add_argument("id", metavar="ID")
    q = leaf(
        g,
        "rotate-secret",
        _rotate,
        "new secret; the old one keeps signing during a grace period",
    )
    q.add_argument("id", metavar="ID")
    q.add_argument(
        "--grace",
        default="24h",
        help="how long the old secret keeps signing: 0 to 30d (default 24h)",
    )
    q = leaf(
        g,
        "test",
        _test,
        "send a test ping through the running daemon and print the outcome "
        "(exit 0 when it was delivered)",
    )
    q.add_argument("id", metavar="ID")
    q.add_argument("--timeout", default="60", help="seconds to wait for the attempt (default 60)")
    q.add_argument("--no-wait", action="store_true", help="queue the ping and exit")
    # set --ordered|--unordered, replay --from-seq (issue 13: dispatcher/admin/sequences_cli.py)
    sequences_cli.register_webhooks(g)


LIST_COLUMNS = (
    ("id", "ID"),
    ("org_id", "ORG"),
    ("name", "NAME"),
    ("status", "STATUS"),
    ("consecutive_failures", "FAILS"),
    ("events", "EVENTS"),
    ("url", "URL"),
)


def _list(args: argparse.Namespace, settings: Settings) -> int:
    org = opt_uuid(args.org, "--org")
    status = choice(args.status, api.WEBHOOK_STATUSES, "--status")
    rows = run_db(settings, lambda c: api.list_webhooks(c, org=org, status=status))
    emit(args, rows, lambda: table(rows, LIST_COLUMNS) if rows else "no webhooks match")
    return ExitCode.OK


def _public(row: dict[str, Any], show_secret: bool) -> dict[str, Any]:
    """The webhook without its secret and sensitive header values, unless asked for."""
    return dict(row) if show_secret else api.redacted(row)


def _webhook_text(w: dict[str, Any]) -> str:
    if "secret" in w:
        secret = w["secret"]
    else:
        secret = "hidden (--show-secret prints it)"
    if w.get("previous_secret_active"):
        rotation = f"the previous secret also signs until {when(w['previous_expires_at'])}"
    elif w.get("rotated_at"):
        rotation = "only the current secret signs (the previous one expired)"
    else:
        rotation = "never rotated"
    headers = w.get("headers") or {}
    return fields(
        [
            ("webhook", w["id"]),
            ("organization", w["org_id"]),
            ("name", w["name"]),
            ("description", w.get("description")),
            ("url", w["url"]),
            ("events", w["events"]),
            ("status", w["status"]),
            ("consecutive failures", w["consecutive_failures"]),
            ("last triggered", w.get("last_triggered_at")),
            ("last success", w.get("last_success_at")),
            ("last failure", w.get("last_failure_at")),
            ("created", w.get("created_at")),
            ("updated", w.get("updated_at")),
            ("custom headers", ", ".join(f"{k}: {v}" for k, v in headers.items()) or None),
            ("secret", secret),
            ("rotation", rotation),
            *_hold_fields(w.get("hold") or {}),
        ]
    )


def _hold_fields(hold: dict[str, Any]) -> list[tuple[str, Any]]:
    """What a disabled webhook holds, and how its last hold ended."""
    out: list[tuple[str, Any]] = [("held events", hold.get("held") or 0)]
    if hold.get("held"):
        out.append(("oldest held event", hold.get("oldest_held_event_at")))
    if hold.get("streak_rows"):
        out.append(("streak to requeue", hold["streak_rows"]))
    if hold.get("last_action"):
        out.append(
            (
                "last hold",
                f"{hold['last_action']} {when(hold['last_action_at'])}: "
                + _hold_counts(hold, "last_"),
            )
        )
    return out


def _hold_counts(row: dict[str, Any], prefix: str = "") -> str:
    if row.get(f"{prefix}action") == "discarded":
        return f"{row[f'{prefix}discarded']} held event(s) discarded"
    return (
        f"{row[f'{prefix}released']} held event(s) queued, {row[f'{prefix}requeued']} "
        f"streak delivery(ies) back to pending, {row[f'{prefix}expired']} dropped "
        "(older than dlq_retention_days)"
    )


def _show(args: argparse.Namespace, settings: Settings) -> int:
    webhook = parse_uuid(args.id, "ID")
    row = _public(run_db(settings, lambda c: api.get_webhook(c, webhook)), args.show_secret)
    emit(args, row, lambda: _webhook_text(row))
    return ExitCode.OK


def _headers(items: list[str]) -> dict[str, str]:
    raw: dict[str, str] = {}
    for item in items:
        cut = min((i for i in (item.find("="), item.find(":")) if i > 0), default=-1)
        if cut < 0:
            raise InvalidInput(f"--header {item!r}: write NAME=VALUE")
        raw[item[:cut].strip()] = item[cut + 1 :].strip()
    usable, ignored = api.check_headers(raw, "--header")
    for name in ignored:
        warn(f"custom header {name!r} is set by the dispatcher itself and will be ignored")
    return usable


def _add(args: argparse.Namespace, settings: Settings) -> int:
    org = parse_uuid(args.org, "--org")
    name = api.check_name(args.name, "--name")
    events = [e.strip() for chunk in args.events for e in chunk.split(",") if e.strip()]
    api.check_events(events, "--events")
    api.check_secret(args.secret, "--secret")
    headers = _headers(args.header)
    url = args.url.strip()
    for message in asyncio.run(api.check_url(url, settings.allowed_networks)):
        warn(message)
    row = run_db(
        settings,
        lambda c: api.add_webhook(
            c,
            org=org,
            name=name,
            url=url,
            events=events,
            headers=headers,
            description=args.description,
            secret=args.secret,
            active=not args.inactive,
        ),
    )
    emit(
        args,
        row,
        lambda: (
            _webhook_text(row)
            + "\n\nGive the secret to the receiver now; `webhooks show` hides it."
        ),
    )
    return ExitCode.OK


def _enable(args: argparse.Namespace, settings: Settings) -> int:
    webhook = parse_uuid(args.id, "ID")
    row = run_db(settings, lambda c: api.set_webhook_status(c, webhook, "active"))

    def human() -> str:
        text = f"webhook {webhook} is active (consecutive failures reset)."
        hold = row.get("hold")
        if hold is not None:
            return f"{text}\nits hold was released: {_hold_counts(hold)}"
        return (
            f"{text}\nEvents published while a person had it switched off are not sent: "
            f"dispatcher recover --webhook {webhook} --since TIME"
        )

    emit(args, row, human)
    return ExitCode.OK


def _discard_hold(args: argparse.Namespace, settings: Settings) -> int:
    webhook = parse_uuid(args.id, "ID")
    n = run_db(settings, lambda c: api.discard_hold(c, webhook))
    emit(
        args,
        {"webhook_id": webhook, "discarded": n},
        lambda: (
            f"discarded {n} held event(s) of webhook {webhook}; its failing streak stays "
            "in the DLQ and is not requeued when it is enabled"
        ),
    )
    return ExitCode.OK


def _disable(args: argparse.Namespace, settings: Settings) -> int:
    webhook = parse_uuid(args.id, "ID")
    row = run_db(settings, lambda c: api.set_webhook_status(c, webhook, "inactive"))

    def human() -> str:
        text = f"webhook {webhook} is inactive: nothing is sent to it"
        hold = row.get("hold")
        if hold is not None:  # it was disabled: a person's choice ends the hold
            return f"{text}\nits hold was discarded: {_hold_counts(hold)}"
        return text

    emit(args, row, human)
    return ExitCode.OK


def _rotate(args: argparse.Namespace, settings: Settings) -> int:
    webhook = parse_uuid(args.id, "ID")
    grace = parse_duration(args.grace, "--grace")
    api.check_grace(grace, "--grace")
    row = run_db(settings, lambda c: api.rotate_secret(c, webhook, grace))

    def human() -> str:
        if grace.total_seconds() == 0:
            until = "the previous secret no longer signs"
        else:
            until = (
                f"the previous secret keeps signing until "
                f"{when(row['previous_expires_at'])}: receivers verifying "
                "either secret accept requests until then"
            )
        return f"new secret: {row['new_secret']}\n{until}"

    emit(args, {"webhook_id": webhook, **row}, human)
    return ExitCode.OK


def _test(args: argparse.Namespace, settings: Settings) -> int:
    webhook = parse_uuid(args.id, "ID")
    try:
        timeout = float(args.timeout)
    except ValueError:
        raise InvalidInput(f"--timeout: {args.timeout!r} is not a number of seconds") from None
    if not 0 < timeout <= 3600:
        raise InvalidInput("--timeout must be between 0 and 3600 seconds")

    async def go(conn: api.Conn) -> dict[str, Any]:
        delivery = await api.send_test(conn, webhook)
        if args.no_wait:
            return {"id": delivery, "status": "pending"}
        return await api.wait_outcome(conn, delivery, timeout=timeout)

    row = run_db(settings, go)
    if args.no_wait:
        emit(args, row, lambda: f"queued test ping {row['id']}")
        return ExitCode.OK
    emit(
        args,
        row,
        lambda: fields(
            [
                ("test ping", row["id"]),
                ("status", row["status"]),
                ("url", row["request_url"]),
                ("response", row["response_status"]),
                ("duration ms", row["duration_ms"]),
                ("error", row["error_message"]),
                ("next attempt", row["next_retry_at"]),
            ]
        ),
    )
    return ExitCode.OK if row["status"] == "success" else ExitCode.FAILURE
