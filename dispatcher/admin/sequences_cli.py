"""`dispatcher webhooks set WEBHOOK --ordered|--unordered`, `dispatcher webhooks replay
WEBHOOK --from-seq N` and `dispatcher deliveries list --webhook W --after-seq N`
(dispatcher/admin/sequences.py; docs/receivers.md "Order and sequence numbers")."""

from __future__ import annotations

import argparse

from dispatcher.admin import sequences
from dispatcher.admin.commands import Sub, emit, int_arg, leaf, run_db
from dispatcher.admin.format import parse_uuid, table
from dispatcher.errors import ExitCode, InvalidInput
from dispatcher.settings import Settings

SINCE_COLUMNS = (
    ("sequence", "SEQ"),
    ("delivery_id", "ID"),
    ("created_at", "CREATED"),
    ("event_type", "EVENT"),
    ("status", "STATUS"),
    ("attempt_number", "TRIES"),
    ("order_key", "KEY"),
)


def register_webhooks(g: Sub) -> None:
    """The `set` and `replay` actions of `dispatcher webhooks`."""
    q = leaf(g, "set", _set, "change a webhook's delivery settings")
    q.add_argument("id", metavar="ID")
    order = q.add_mutually_exclusive_group(required=True)
    order.add_argument(
        "--ordered",
        action="store_true",
        help="deliver events of one aggregate_id one at a time, in the order they were "
        "published (from the next events on)",
    )
    order.add_argument("--unordered", action="store_true", help="no order per aggregate_id")
    q = leaf(
        g,
        "replay",
        _replay,
        "send the webhook's numbered deliveries again from a sequence number on "
        "(same webhook-id and number as the first time)",
    )
    q.add_argument("id", metavar="ID")
    q.add_argument("--from-seq", required=True, metavar="N", help="first sequence number")
    q.add_argument("--limit", default="1000", help="at most this many numbers (default 1000)")


def _set(args: argparse.Namespace, settings: Settings) -> int:
    webhook = parse_uuid(args.id, "ID")
    ordered = bool(args.ordered)
    row = run_db(settings, lambda c: sequences.set_ordered(c, webhook, ordered))
    emit(
        args,
        row,
        lambda: (
            f"webhook {webhook} is {'ordered' if ordered else 'unordered'} "
            f"(last sequence number {row['last_sequence']})"
        ),
    )
    return ExitCode.OK


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    webhook = parse_uuid(args.id, "ID")
    start = int_arg(args.from_seq, "--from-seq")
    limit = int_arg(args.limit, "--limit")
    row = run_db(settings, lambda c: sequences.replay_from(c, webhook, start, limit=limit))

    def human() -> str:
        if row["last_sequence"] is None:
            return f"webhook {webhook} has no delivery numbered {start} or later"
        text = (
            f"queued {row['replayed']} replay(s) of webhook {webhook}, "
            f"sequence {start} to {row['last_sequence']}"
        )
        if row["skipped_open"]:
            text += f"; {row['skipped_open']} still pending or retrying were left to go out"
        return text

    emit(args, row, human)
    return ExitCode.OK


def list_after(args: argparse.Namespace, settings: Settings) -> int:
    """`deliveries list --after-seq N`: needs --webhook, lowest number first."""
    if args.webhook is None:
        raise InvalidInput("--after-seq needs --webhook: sequence numbers are per webhook")
    for name in ("org", "since", "until", "status"):
        if getattr(args, name) is not None:
            raise InvalidInput(f"--after-seq cannot be combined with --{name}")
    webhook = parse_uuid(args.webhook, "--webhook")
    after = int_arg(args.after_seq, "--after-seq")
    limit = int_arg(args.limit, "--limit")
    rows = run_db(settings, lambda c: sequences.deliveries_since(c, webhook, after, limit=limit))

    def human() -> str:
        if not rows:
            return f"no delivery of webhook {webhook} numbered after {after}"
        return table(rows, SINCE_COLUMNS)

    emit(args, rows, human)
    return ExitCode.OK
