"""`dispatcher webhooks list|show|health|add|enable|disable|discard-hold|rotate-secret|test`
(`set` and `replay`: dispatcher/sequences_cli.py).

Secrets and custom header values are hidden unless --show-secret; `add` and
`rotate-secret` print the new secret once, because the receiver needs it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
from typing import Any

from dispatcher import admin, cli
from dispatcher.admin_cli import Sub, _leaf, choice, emit, opt_uuid, run_db, warn
from dispatcher.admin_format import fields, parse_duration, parse_uuid, table, when
from dispatcher.errors import ExitCode, InvalidInput
from dispatcher.request import _SENSITIVE as SENSITIVE_HEADER
from dispatcher.request import InvalidWebhook, custom_headers
from dispatcher.settings import Settings
from dispatcher.ssrf import GuardedResolver, InvalidTarget, TargetRefused, parse_ip_literal
from dispatcher.ssrf import validate_url as guard_url

SECRET = re.compile(r"^[0-9a-f]{64}$")
MAX_GRACE_DAYS = 30


def register(sub: Sub) -> None:
    from dispatcher.webhook_health_cli import add_parser as add_health_parser

    p = sub.add_parser(
        "webhooks", help="list, show, health, add, enable, disable, rotate, test webhooks"
    )
    g = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = _leaf(g, "list", "webhooks list", "list webhooks (soft-deleted ones are left out)")
    q.add_argument("--org", metavar="ID", help="only this organization")
    q.add_argument("--status", help="only active, inactive or disabled webhooks")
    q = _leaf(g, "show", "webhooks show", "one webhook, with its rotation state")
    q.add_argument("id", metavar="ID")
    q.add_argument("--show-secret", action="store_true", help="print the secret and headers")
    add_health_parser(g)
    q = _leaf(g, "add", "webhooks add", "create a webhook (prints its secret once)")
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
    q = _leaf(
        g,
        "enable",
        "webhooks enable",
        "set active (resets consecutive failures); a disabled webhook's held events "
        "and failing streak are delivered",
    )
    q.add_argument("id", metavar="ID")
    q = _leaf(g, "disable", "webhooks disable", "set inactive (switched off by a person)")
    q.add_argument("id", metavar="ID")
    q = _leaf(
        g,
        "discard-hold",
        "webhooks discard-hold",
        "throw away the events held for a disabled webhook (and end its streak) instead "
        "of delivering them when it is enabled",
    )
    q.add_argument("id", metavar="ID")
    q = _leaf(
        g,
        "rotate-secret",
        "webhooks rotate-secret",
        "new secret; the old one keeps signing during a grace period",
    )
    q.add_argument("id", metavar="ID")
    q.add_argument(
        "--grace",
        default="24h",
        help="how long the old secret keeps signing: 0 to 30d (default 24h)",
    )
    q = _leaf(
        g,
        "test",
        "webhooks test",
        "send a test ping through the running daemon and print the outcome "
        "(exit 0 when it was delivered)",
    )
    q.add_argument("id", metavar="ID")
    q.add_argument("--timeout", default="60", help="seconds to wait for the attempt (default 60)")
    q.add_argument("--no-wait", action="store_true", help="queue the ping and exit")
    # set --ordered|--unordered, replay --from-seq (issue 13: dispatcher/sequences_cli.py)
    from dispatcher.sequences_cli import register_webhooks

    register_webhooks(g)


LIST_COLUMNS = (
    ("id", "ID"),
    ("org_id", "ORG"),
    ("name", "NAME"),
    ("status", "STATUS"),
    ("consecutive_failures", "FAILS"),
    ("events", "EVENTS"),
    ("url", "URL"),
)


@cli.command("webhooks list")
def _list(args: argparse.Namespace, settings: Settings) -> int:
    org = opt_uuid(args.org, "--org")
    status = choice(args.status, admin.WEBHOOK_STATUSES, "--status")
    rows = run_db(settings, lambda c: admin.list_webhooks(c, org=org, status=status))
    emit(args, rows, lambda: table(rows, LIST_COLUMNS) if rows else "no webhooks match")
    return ExitCode.OK


def _public(row: dict[str, Any], show_secret: bool) -> dict[str, Any]:
    """The webhook without its secret and sensitive header values, unless asked for."""
    out = dict(row)
    if not show_secret:
        out.pop("secret", None)
        out["headers"] = {
            k: "[hidden]" if SENSITIVE_HEADER.search(k) else v
            for k, v in (row.get("headers") or {}).items()
        }
    return out


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


@cli.command("webhooks show")
def _show(args: argparse.Namespace, settings: Settings) -> int:
    webhook = parse_uuid(args.id, "ID")
    row = _public(run_db(settings, lambda c: admin.get_webhook(c, webhook)), args.show_secret)
    emit(args, row, lambda: _webhook_text(row))
    return ExitCode.OK


def check_url(url: str, settings: Settings) -> list[str]:
    """InvalidInput when the SSRF guard refuses the URL; warnings for what may fail later."""
    try:
        parsed = guard_url(url, settings.allowed_networks)
    except InvalidTarget as exc:
        raise InvalidInput(str(exc)) from None
    except TargetRefused as exc:
        raise InvalidInput(f"webhook URL refused by the SSRF guard: {exc}") from None
    warnings = []
    if parsed.scheme == "http":
        warnings.append("the URL is http://: payloads travel unencrypted; prefer https://")
    host = parsed.host or ""
    if parse_ip_literal(host) is None:
        warnings += asyncio.run(_resolve(host, settings))
    return warnings


async def _resolve(host: str, settings: Settings) -> list[str]:
    resolver = GuardedResolver(settings.allowed_networks)
    try:
        await resolver.resolve(host, 0, socket.AF_UNSPEC)
    except TargetRefused as exc:
        return [f"{exc}; the daemon will refuse to send to it while it resolves there"]
    except OSError as exc:
        return [f"cannot resolve {host!r} from here ({exc}); check the name"]
    finally:
        await resolver.close()
    return []


def _headers(items: list[str]) -> dict[str, str]:
    raw: dict[str, str] = {}
    for item in items:
        cut = min((i for i in (item.find("="), item.find(":")) if i > 0), default=-1)
        if cut < 0:
            raise InvalidInput(f"--header {item!r}: write NAME=VALUE")
        raw[item[:cut].strip()] = item[cut + 1 :].strip()
    try:
        usable, ignored = custom_headers(raw)
    except InvalidWebhook as exc:
        raise InvalidInput(f"--header: {exc}") from None
    for name in ignored:
        warn(f"custom header {name!r} is set by the dispatcher itself and will be ignored")
    return usable


@cli.command("webhooks add")
def _add(args: argparse.Namespace, settings: Settings) -> int:
    org = parse_uuid(args.org, "--org")
    name = args.name.strip()
    if not 1 <= len(name) <= 100:
        raise InvalidInput("--name must be 1 to 100 characters")
    events = [e.strip() for chunk in args.events for e in chunk.split(",") if e.strip()]
    if not events:
        raise InvalidInput("--events: give at least one event type or pattern")
    bad = [e for e in events if any(c.isspace() for c in e)]
    if bad:
        raise InvalidInput(f"--events: {bad[0]!r} contains whitespace")
    if args.secret is not None and not SECRET.match(args.secret):
        raise InvalidInput("--secret must be 64 lowercase hexadecimal characters")
    headers = _headers(args.header)
    url = args.url.strip()
    for message in check_url(url, settings):
        warn(message)
    row = run_db(
        settings,
        lambda c: admin.add_webhook(
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


@cli.command("webhooks enable")
def _enable(args: argparse.Namespace, settings: Settings) -> int:
    webhook = parse_uuid(args.id, "ID")
    row = run_db(settings, lambda c: admin.set_webhook_status(c, webhook, "active"))

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


@cli.command("webhooks discard-hold")
def _discard_hold(args: argparse.Namespace, settings: Settings) -> int:
    webhook = parse_uuid(args.id, "ID")
    n = run_db(settings, lambda c: admin.discard_hold(c, webhook))
    emit(
        args,
        {"webhook_id": webhook, "discarded": n},
        lambda: (
            f"discarded {n} held event(s) of webhook {webhook}; its failing streak stays "
            "in the DLQ and is not requeued when it is enabled"
        ),
    )
    return ExitCode.OK


@cli.command("webhooks disable")
def _disable(args: argparse.Namespace, settings: Settings) -> int:
    webhook = parse_uuid(args.id, "ID")
    row = run_db(settings, lambda c: admin.set_webhook_status(c, webhook, "inactive"))

    def human() -> str:
        text = f"webhook {webhook} is inactive: nothing is sent to it"
        hold = row.get("hold")
        if hold is not None:  # it was disabled: a person's choice ends the hold
            return f"{text}\nits hold was discarded: {_hold_counts(hold)}"
        return text

    emit(args, row, human)
    return ExitCode.OK


@cli.command("webhooks rotate-secret")
def _rotate(args: argparse.Namespace, settings: Settings) -> int:
    webhook = parse_uuid(args.id, "ID")
    grace = parse_duration(args.grace, "--grace")
    if (
        grace.total_seconds() < 0
        or grace.days > MAX_GRACE_DAYS
        or (grace.days == MAX_GRACE_DAYS and grace.seconds)
    ):
        raise InvalidInput(f"--grace must be between 0 and {MAX_GRACE_DAYS}d")
    row = run_db(settings, lambda c: admin.rotate_secret(c, webhook, grace))

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


@cli.command("webhooks test")
def _test(args: argparse.Namespace, settings: Settings) -> int:
    webhook = parse_uuid(args.id, "ID")
    try:
        timeout = float(args.timeout)
    except ValueError:
        raise InvalidInput(f"--timeout: {args.timeout!r} is not a number of seconds") from None
    if not 0 < timeout <= 3600:
        raise InvalidInput("--timeout must be between 0 and 3600 seconds")

    async def go(conn: admin.Conn) -> dict[str, Any]:
        delivery = await admin.send_test(conn, webhook)
        if args.no_wait:
            return {"id": delivery, "status": "pending"}
        return await admin.wait_outcome(conn, delivery, timeout=timeout)

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
