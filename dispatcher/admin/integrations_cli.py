"""Operator commands for integrations and their encryption keys.

    dispatcher keys generate [--id ID]      print a new key entry for DISPATCHER_ENCRYPTION_KEYS
    dispatcher keys rotate [--batch N]      re-encrypt every secret under the first (newest) key
    dispatcher secrets encrypt [--batch N]  encrypt every plaintext secret in place
    dispatcher integrations list [--org ORG] [--json]
    dispatcher integrations check ID [--json]   run one health check now (check_type manual)

Secrets are never printed; `keys generate` prints only the new key, which is its purpose.
dispatcher/cli.py calls `register`; the checks and queries are integrations.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import uuid
from typing import Any

from dispatcher.admin import integrations
from dispatcher.admin.commands import Sub
from dispatcher.errors import ExitCode
from dispatcher.progress import Progress
from dispatcher.settings import Settings


def register(sub: Sub) -> None:
    keys = sub.add_parser("keys", help="encryption keys for integration secrets")
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    p = ksub.add_parser("generate", help="print a new key entry (key-id:base64)")
    p.add_argument("--id", dest="key_id", help="key id (default: k<YYYYMMDD>)")
    p.set_defaults(handler=_keys_generate)
    p = ksub.add_parser(
        "rotate", help="re-encrypt every secret under the first key of DISPATCHER_ENCRYPTION_KEYS"
    )
    p.add_argument("--batch", type=_batch, default=200, help="rows per transaction (200)")
    p.set_defaults(handler=_keys_rotate)

    secrets = sub.add_parser("secrets", help="integration secrets at rest")
    ssub = secrets.add_subparsers(dest="secrets_command", metavar="ACTION", required=True)
    p = ssub.add_parser("encrypt", help="encrypt every plaintext secret in place (idempotent)")
    p.add_argument("--batch", type=_batch, default=200, help="rows per transaction (200)")
    p.set_defaults(handler=_secrets_encrypt)

    integ = sub.add_parser("integrations", help="list integrations, run a health check")
    isub = integ.add_subparsers(dest="integrations_command", metavar="ACTION", required=True)
    p = isub.add_parser("list", help="integrations with their status, health and token")
    p.add_argument("--org", type=_uuid, help="only this organisation")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=_integrations_list)
    p = isub.add_parser("check", help="run one health check now (recorded as manual)")
    p.add_argument("integration_id", type=_uuid, metavar="ID", help="the integration's id (uuid)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_integrations_check)


def _batch(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError("batch must be 1-10000")
    return value


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID") from None


def _keys_generate(args: argparse.Namespace, _: Settings) -> int:
    print(integrations.new_key(args.key_id))
    return ExitCode.OK


def _keys_rotate(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_reencrypt(settings, rotate=True, batch=args.batch))


def _secrets_encrypt(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_reencrypt(settings, rotate=False, batch=args.batch))


async def _reencrypt(settings: Settings, *, rotate: bool, batch: int) -> int:
    keyring = integrations.required_keyring(settings)
    report = await integrations.reencrypt_all(
        settings,
        keyring,
        rotate=rotate,
        batch=batch,
        progress=lambda total: Progress(
            "keys_rotate" if rotate else "secrets_encrypt", total, unit="rows"
        ),
    )
    what = f"under key {keyring.primary!r}"
    print(
        f"{'re-encrypted' if rotate else 'encrypted'} {report.values_changed} value(s) in "
        f"{report.rows_changed} row(s) {what} ({report.rows_read} rows read)"
    )
    if report.raced:
        print(f"{report.raced} row(s) changed while being read: run the command again")
    for p in report.problems:
        print(
            f"cannot decrypt {p.table} row {p.row_id} (integration {p.integration_id}): "
            f"{p.message}; left unchanged",
            file=sys.stderr,
        )
    return ExitCode.FAILURE if report.problems or report.raced else ExitCode.OK


def _integrations_list(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_list(settings, args.org, args.json))


async def _list(settings: Settings, org: uuid.UUID | None, as_json: bool) -> int:
    rows = await integrations.list_integrations(settings, org)
    if as_json:
        for r in rows:
            print(json.dumps(r, default=str))
        return ExitCode.OK
    header = (
        "ID",
        "ORG",
        "TYPE",
        "PROVIDER",
        "NAME",
        "STATUS",
        "HEALTH",
        "LAST CHECK",
        "TOKEN",
        "FAILOVER",
    )
    table = [header] + [
        (
            str(r["id"]),
            str(r["org_id"])[:8],
            r["type"] or "",
            r["provider"] or "",
            (r["name"] or "")[:30],
            r["status"] or "",
            r["health_status"] or "unknown",
            _when(r["last_health_check"]),
            _token(r),
            _failover(r),
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return ExitCode.OK


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _token(r: dict[str, Any]) -> str:
    if not r["token_status"]:
        return "-"
    return f"{r['token_status']} until {_when(r['token_expires_at'])}"


def _failover(r: dict[str, Any]) -> str:
    if not r["failover_role"]:
        return "-"
    return f"{r['failover_role']} (active: {r['failover_active']})"


def _integrations_check(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_check(settings, args.integration_id, args.json))


async def _check(settings: Settings, integration_id: uuid.UUID, as_json: bool) -> int:
    row, rec = await integrations.check_now(settings, integration_id)
    if rec is None:
        print(
            f"integration {integration_id}: nothing to probe (no health_check_url in its config "
            "and no OAuth token)"
        )
        return ExitCode.FAILURE
    res = rec.result
    if as_json:
        print(
            json.dumps(
                {
                    "integration_id": str(integration_id),
                    "status": res.status,
                    "response_time_ms": res.response_time_ms,
                    "error": res.error_message,
                    "error_code": res.error_code,
                    "health_status": rec.health_status,
                    "previous_health_status": rec.previous,
                    "events": [e for e in [rec.event, *rec.failover] if e],
                }
            )
        )
    else:
        line = f"integration {integration_id} ({row['provider']} {row['name']!r}): {res.status}"
        line += f" in {res.response_time_ms} ms" if res.response_time_ms is not None else ""
        if res.error_message:
            line += f": {res.error_message} [{res.error_code}]"
        line += f"; health {rec.previous or 'unknown'} -> {rec.health_status}"
        print(line)
    return ExitCode.OK if not res.failed else ExitCode.FAILURE
