"""Operator actions on webhooks, deliveries, the DLQ and retry settings.

Thin async functions over one connection: the rules live in the SQL admin API
(`sql/migrations/0005_admin_api.sql`), the queries in `sql/admin.sql`. Database
errors become the dispatcher's own (NotFound, InvalidInput, ...), one line each.
Rows come back as plain dicts (psycopg's dict_row).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import re
import secrets as secrets_module
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from dispatcher import backoff
from dispatcher.errors import (
    DatabaseUnavailable,
    DispatcherError,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from dispatcher.progress import Progress, finishing
from dispatcher.queries import query
from dispatcher.request import _SENSITIVE as SENSITIVE_HEADER
from dispatcher.request import InvalidWebhook, custom_headers
from dispatcher.ssrf import (
    GuardedResolver,
    InvalidTarget,
    IPNetwork,
    TargetRefused,
    parse_ip_literal,
    validate_url,
)

Conn = psycopg.AsyncConnection[DictRow]
Row = dict[str, Any]

WEBHOOK_STATUSES = ("active", "inactive", "disabled")
WEBHOOK_SECRET = re.compile(r"^[0-9a-f]{64}$")
MAX_NAME = 100
MAX_GRACE_DAYS = 30
DELIVERY_STATUSES = ("pending", "retrying", "success", "failed", "dlq")
# integration_retry_config's strategies, ranges and defaults: backoff.py's, the one Python home.
RETRY_STRATEGIES = backoff.STRATEGIES
RETRY_RANGES = backoff.RANGES
RETRY_DEFAULTS: Row = dataclasses.asdict(backoff.RetryPolicy())


class NoOutcome(DispatcherError):
    """A delivery was not attempted within the time waited (is a daemon running?)."""


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Turn the admin API's SQL errors into the dispatcher's, with their one-line message."""
    try:
        yield
    except psycopg.errors.NoDataFound as exc:
        raise NotFound(_message(exc)) from None
    except psycopg.errors.InsufficientPrivilege as exc:
        if exc.diag.schema_name == "dispatcher":  # another organization's row
            raise InvalidInput(_message(exc)) from None
        raise PermissionDenied(_message(exc)) from None
    except (
        psycopg.errors.DataException,
        psycopg.errors.ObjectNotInPrerequisiteState,
        psycopg.errors.IntegrityError,
    ) as exc:
        raise InvalidInput(_message(exc)) from None
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"the database query failed: {_message(exc)}") from None


def _message(exc: psycopg.Error) -> str:
    if exc.diag.message_primary:
        return exc.diag.message_primary
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def _one(conn: Conn, name: str, params: dict[str, Any]) -> Row | None:
    with translated():
        cur = await conn.execute(query(name), params)
        row = await cur.fetchone()
    return dict(row) if row is not None else None


async def _all(conn: Conn, name: str, params: dict[str, Any]) -> list[Row]:
    with translated():
        cur = await conn.execute(query(name), params)
        return [dict(r) for r in await cur.fetchall()]


async def _required(conn: Conn, name: str, params: dict[str, Any]) -> Row:
    row = await _one(conn, name, params)
    assert row is not None, f"{name} returned no row"
    return row


# -- organizations ------------------------------------------------------------


async def require_org(conn: Conn, org: UUID) -> None:
    row = await _required(conn, "admin_org_exists", {"org": org})
    if not row["found"]:
        raise NotFound(f"organization {org} does not exist")


async def org_of_webhook(conn: Conn, webhook: UUID) -> UUID:
    row = await _one(conn, "admin_webhook_org", {"id": webhook})
    if row is None:
        raise NotFound(f"webhook {webhook} does not exist")
    return UUID(str(row["org_id"]))


async def org_of_delivery(conn: Conn, delivery: UUID) -> UUID:
    row = await _one(conn, "admin_delivery_org", {"id": delivery})
    if row is None:
        raise NotFound(f"delivery {delivery} does not exist")
    return UUID(str(row["org_id"]))


# -- webhook rules (`what` names the value in the message: a CLI flag, say) ----


def check_name(name: str, what: str = "name") -> str:
    """The name without surrounding blanks; 1 to 100 characters."""
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise InvalidInput(f"{what} must be 1 to {MAX_NAME} characters")
    return name


def check_events(events: Sequence[str], what: str = "events") -> list[str]:
    """At least one event type or pattern, none with whitespace."""
    if not events:
        raise InvalidInput(f"{what}: give at least one event type or pattern")
    bad = [e for e in events if any(c.isspace() for c in e)]
    if bad:
        raise InvalidInput(f"{what}: {bad[0]!r} contains whitespace")
    return list(events)


def check_secret(secret: str | None, what: str = "secret") -> None:
    """A given secret is 64 lowercase hex characters (None: one is generated)."""
    if secret is not None and not WEBHOOK_SECRET.match(secret):
        raise InvalidInput(f"{what} must be 64 lowercase hexadecimal characters")


def check_headers(
    raw: Mapping[str, str], what: str = "headers"
) -> tuple[dict[str, str], tuple[str, ...]]:
    """Custom headers as the daemon sends them: (usable, ignored names: set by the daemon)."""
    try:
        return custom_headers(raw)
    except InvalidWebhook as exc:
        raise InvalidInput(f"{what}: {exc}") from None


def check_grace(grace: timedelta, what: str = "grace") -> None:
    """How long a rotated-out secret keeps signing: 0 to 30 days."""
    if (
        grace.total_seconds() < 0
        or grace.days > MAX_GRACE_DAYS
        or (grace.days == MAX_GRACE_DAYS and grace.seconds)
    ):
        raise InvalidInput(f"{what} must be between 0 and {MAX_GRACE_DAYS}d")


async def check_url(url: str, allowed: Sequence[IPNetwork]) -> list[str]:
    """InvalidInput when the SSRF guard refuses the URL; warnings for what may fail later."""
    try:
        parsed = validate_url(url, allowed)
    except InvalidTarget as exc:
        raise InvalidInput(str(exc)) from None
    except TargetRefused as exc:
        raise InvalidInput(f"webhook URL refused by the SSRF guard: {exc}") from None
    warnings = []
    if parsed.scheme == "http":
        warnings.append("the URL is http://: payloads travel unencrypted; prefer https://")
    host = parsed.host or ""
    if parse_ip_literal(host) is None:
        warnings += await _resolve(host, allowed)
    return warnings


async def _resolve(host: str, allowed: Sequence[IPNetwork]) -> list[str]:
    resolver = GuardedResolver(allowed)
    try:
        await resolver.resolve(host, 0, socket.AF_UNSPEC)
    except TargetRefused as exc:
        return [f"{exc}; the daemon will refuse to send to it while it resolves there"]
    except OSError as exc:
        return [f"cannot resolve {host!r} from here ({exc}); check the name"]
    finally:
        await resolver.close()
    return []


def redacted(webhook: Row) -> Row:
    """The webhook without its secret, and with sensitive header values hidden."""
    out = dict(webhook)
    out.pop("secret", None)
    out["headers"] = {
        k: "[hidden]" if SENSITIVE_HEADER.search(k) else v
        for k, v in (webhook.get("headers") or {}).items()
    }
    return out


# -- webhooks -----------------------------------------------------------------


async def list_webhooks(
    conn: Conn, *, org: UUID | None = None, status: str | None = None
) -> list[Row]:
    if org is not None:
        await require_org(conn, org)
    return await _all(conn, "admin_webhooks_list", {"org": org, "status": status})


async def get_webhook(conn: Conn, webhook: UUID) -> Row:
    """The webhook, with its hold (`hold`: held events, streak rows, last release)."""
    row = await _one(conn, "admin_webhook_get", {"id": webhook})
    if row is None:
        raise NotFound(f"webhook {webhook} does not exist")
    row["hold"] = await _required(conn, "admin_webhook_hold", {"id": webhook})
    return row


async def add_webhook(
    conn: Conn,
    *,
    org: UUID,
    name: str,
    url: str,
    events: Sequence[str],
    headers: dict[str, str] | None = None,
    description: str | None = None,
    secret: str | None = None,
    active: bool = True,
) -> Row:
    """Create a webhook; its secret is generated (64 lowercase hex) unless given.

    The URL is the caller's to check first (`check_url`: it resolves the host)."""
    name = check_name(name)
    events = check_events(events)
    check_secret(secret)
    usable, _ = check_headers(headers or {})
    await require_org(conn, org)
    params = {
        "org": org,
        "name": name,
        "description": description,
        "url": url,
        "secret": secret or secrets_module.token_hex(32),
        "events": events,
        "headers": Jsonb(usable),
        "status": "active" if active else "inactive",
    }
    row = await _required(conn, "admin_webhook_insert", params)
    return await get_webhook(conn, row["id"])


async def set_webhook_status(conn: Conn, webhook: UUID, status: str) -> Row:
    if status not in WEBHOOK_STATUSES:
        raise InvalidInput(f"webhook status must be one of {', '.join(WEBHOOK_STATUSES)}")
    async with conn.transaction():
        row = await _one(conn, "admin_webhook_set_status", {"id": webhook, "status": status})
        if row is None:
            raise NotFound(f"webhook {webhook} does not exist")
        # Leaving 'disabled' released (active) or discarded (inactive) the hold, in this
        # transaction (trigger of 0020_hold.sql): report what it did.
        row["hold"] = await _one(conn, "admin_webhook_released_now", {"id": webhook})
    return row


async def discard_hold(conn: Conn, webhook: UUID) -> int:
    """Throw away the events held for a disabled webhook; returns how many."""
    org = await org_of_webhook(conn, webhook)
    row = await _required(conn, "admin_discard_hold", {"org": org, "id": webhook})
    return int(row["discarded"])


async def rotate_secret(conn: Conn, webhook: UUID, grace: timedelta) -> Row:
    """New secret; the old one keeps signing until `previous_expires_at`."""
    check_grace(grace)
    org = await org_of_webhook(conn, webhook)
    return await _required(conn, "admin_rotate_secret", {"org": org, "id": webhook, "grace": grace})


async def send_test(conn: Conn, webhook: UUID) -> UUID:
    """Queue a test ping (as the host's admin API does); returns its delivery id."""
    org = await org_of_webhook(conn, webhook)
    row = await _required(conn, "admin_send_test", {"org": org, "id": webhook})
    return UUID(str(row["id"]))


async def wait_outcome(conn: Conn, delivery: UUID, *, timeout: float, every: float = 0.25) -> Row:
    """The delivery once attempted (or finished without one); NoOutcome after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        row = await _one(conn, "admin_delivery_outcome", {"id": delivery})
        if row is None:
            raise NotFound(f"delivery {delivery} does not exist (deleted while waiting?)")
        if row["attempts"] or row["status"] not in ("pending", "retrying"):
            return row
        if loop.time() >= deadline:
            raise NoOutcome(
                f"delivery {delivery} was not attempted within {timeout:g} s: is a "
                "`dispatcher run` daemon running against this database? It stays pending "
                "and is sent when one runs"
            )
        await asyncio.sleep(every)


# -- deliveries ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """Filters shared by the delivery and DLQ commands (None = not filtered)."""

    org: UUID | None = None
    webhook: UUID | None = None
    since: datetime | None = None
    until: datetime | None = None

    def params(self) -> dict[str, Any]:
        return {"org": self.org, "webhook": self.webhook, "since": self.since, "until": self.until}

    def check(self) -> None:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidInput(
                f"the window is empty: --since {self.since.isoformat()} is not before "
                f"--until {self.until.isoformat()}"
            )

    @property
    def filtered(self) -> bool:
        return any(v is not None for v in (self.org, self.webhook, self.since, self.until))


async def _check_window(conn: Conn, window: Window) -> None:
    window.check()
    if window.org is not None:
        await require_org(conn, window.org)
    if window.webhook is not None:
        org = await org_of_webhook(conn, window.webhook)
        if window.org is not None and org != window.org:
            raise InvalidInput(
                f"webhook {window.webhook} does not belong to organization {window.org}"
            )


async def list_deliveries(
    conn: Conn, window: Window, *, status: str | None = None, limit: int = 50
) -> list[Row]:
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidInput(f"delivery status must be one of {', '.join(DELIVERY_STATUSES)}")
    if limit < 1:
        raise InvalidInput(f"--limit must be at least 1, not {limit}")
    await _check_window(conn, window)
    params = {**window.params(), "status": status, "limit": limit}
    return await _all(conn, "admin_deliveries_list", params)


async def get_delivery(conn: Conn, delivery: UUID) -> Row:
    """The delivery with its attempt history (`attempts`, oldest first)."""
    row = await _one(conn, "admin_delivery_get", {"id": delivery})
    if row is None:
        raise NotFound(f"delivery {delivery} does not exist")
    row["attempts"] = await _all(conn, "admin_delivery_attempts", {"id": delivery})
    return row


async def replay_delivery(conn: Conn, delivery: UUID) -> UUID:
    """A new pending delivery with the same body; returns its id."""
    org = await org_of_delivery(conn, delivery)
    row = await _required(conn, "admin_replay", {"org": org, "id": delivery})
    return UUID(str(row["id"]))


# -- dead-letter queue ----------------------------------------------------------


def _require_filter(window: Window, everything: bool, verb: str) -> None:
    if not everything and not window.filtered:
        raise InvalidInput(
            f"refusing to {verb} every DLQ item: give a filter "
            "(--org, --webhook, --since, --until) or --all"
        )


async def _dlq_org(conn: Conn, window: Window) -> UUID | None:
    await _check_window(conn, window)
    if window.org is None and window.webhook is not None:
        return await org_of_webhook(conn, window.webhook)
    return window.org


async def dlq_list(conn: Conn, window: Window, *, limit: int = 50) -> list[Row]:
    return await list_deliveries(conn, window, status="dlq", limit=limit)


async def dlq_retry(
    conn: Conn,
    window: Window,
    *,
    everything: bool = False,
    batch: int = 1000,
    progress: Callable[[int | None], Progress] | None = None,
) -> Row:
    """Back to pending, attempt 1, due now: {retried, skipped_inactive}.

    Items whose webhook is not active stay in the DLQ (counted in skipped_inactive).
    Walks the matching items in batches of ``batch``, each committed on its own: an
    interrupted run keeps what it did, and running it again retries only what is left.
    ``progress(total)`` makes the Progress that counts the items handled.
    """
    _require_filter(window, everything, "retry")
    org = await _dlq_org(conn, window)
    params = {**window.params(), "org": org}
    meter = None
    if progress is not None:
        counted = int((await _required(conn, "admin_dlq_count", params))["n"])
        meter = progress(counted) if counted > batch else None
    retried = skipped = 0
    after = UUID(int=0)
    with finishing(meter):
        while True:
            rows = await _all(conn, "admin_dlq_batch", {**params, "after": after, "batch": batch})
            if not rows:
                break
            after = rows[-1]["id"]
            by_org: dict[UUID, list[UUID]] = {}
            for r in rows:
                by_org.setdefault(r["org_id"], []).append(r["id"])
            async with conn.transaction():
                for org_id, ids in by_org.items():
                    done = await _required(
                        conn, "admin_dlq_retry_ids", {**params, "org": org_id, "ids": ids}
                    )
                    retried += int(done["retried"])
                    skipped += int(done["skipped_inactive"])
            if meter is not None:
                meter.add(len(rows))
    return {"retried": retried, "skipped_inactive": skipped}


async def dlq_clear(conn: Conn, window: Window, *, everything: bool = False) -> int:
    """Set matching DLQ items to `failed`; returns how many."""
    _require_filter(window, everything, "clear")
    org = await _dlq_org(conn, window)
    name = "admin_dlq_clear_all" if org is None else "admin_dlq_clear_org"
    row = await _required(conn, name, {**window.params(), "org": org})
    return int(row["cleared"])


# -- recover ---------------------------------------------------------------------


async def recover(
    conn: Conn,
    webhook: UUID,
    since: datetime,
    until: datetime | None = None,
    *,
    dry_run: bool = False,
    batch: int = 5000,
    progress: Callable[[int | None], Progress] | None = None,
) -> Row:
    """Re-deliver the window's events the webhook never received: {queued, dlq_superseded}.

    The events to queue are counted first; more than ``batch`` of them are queued slice
    by slice of the window (about ``batch`` events each, cut at the creation time of every
    ``batch``-th event), each slice committed on its own. An event once queued has a
    pending delivery and is no candidate any more: running the command again after an
    interruption queues only what is left. ``progress(total)`` counts the events queued.
    """
    Window(since=since, until=until).check()
    org = await org_of_webhook(conn, webhook)
    if until is None:
        until = (await _required(conn, "admin_now", {}))["now"]
    params = {"org": org, "webhook": webhook, "since": since, "until": until}
    if dry_run:
        return await _required(conn, "admin_recover", {**params, "dry_run": True})
    plan = await _required(conn, "admin_recover_plan", {**params, "batch": max(batch, 1)})
    total = int(plan["n"])
    meter = progress(total) if progress is not None and total > batch else None
    cuts = sorted(c for c in plan["cuts"] if since < c < until)
    bounds = [since, *cuts, until]
    queued = superseded = 0
    with finishing(meter):
        for start, end in itertools.pairwise(bounds):
            row = await _required(
                conn, "admin_recover", {**params, "since": start, "until": end, "dry_run": False}
            )
            queued += int(row["queued"])
            superseded += int(row["dlq_superseded"])
            if meter is not None:
                meter.add(int(row["queued"]))
    return {"queued": queued, "dlq_superseded": superseded}


# -- retry configuration -----------------------------------------------------------


async def get_retry_config(conn: Conn, org: UUID) -> Row:
    """The org's settings; `configured` is False when the host's defaults apply."""
    await require_org(conn, org)
    row = await _one(conn, "admin_retry_config_get", {"org": org})
    if row is None:
        return {"org_id": org, **RETRY_DEFAULTS, "updated_at": None, "configured": False}
    return {**row, "configured": True}


def check_retry_values(values: dict[str, Any]) -> None:
    """InvalidInput naming the first value outside the host UI's ranges."""
    for name, (low, high) in RETRY_RANGES.items():
        value = values.get(name)
        if value is not None and not low <= value <= high:
            raise InvalidInput(f"{name} must be between {low} and {high}, not {value}")
    strategy = values.get("retry_strategy")
    if strategy is not None and strategy not in RETRY_STRATEGIES:
        raise InvalidInput(
            f"retry_strategy must be one of {', '.join(RETRY_STRATEGIES)}, not {strategy!r}"
        )


async def set_retry_config(conn: Conn, org: UUID, **values: Any) -> Row:
    """Change the values given (others kept, or the host's defaults for a new row)."""
    unknown = set(values) - {*RETRY_DEFAULTS}
    if unknown:
        raise InvalidInput(f"unknown retry settings: {', '.join(sorted(unknown))}")
    check_retry_values(values)
    await require_org(conn, org)
    params = {name: values.get(name) for name in RETRY_DEFAULTS}
    row = await _required(conn, "admin_retry_config_set", {"org": org, **params})
    return {**row, "configured": True}


# -- stats -------------------------------------------------------------------------


async def stats(conn: Conn, org: UUID | None = None) -> Row:
    if org is None:
        return await _required(conn, "admin_stats_all", {})
    return await _required(conn, "admin_stats_org", {"org": org})


# -- endpoint health (0028_webhook_health.sql) ---------------------------------------


async def webhook_health(conn: Conn, *, org: UUID | None, webhook: UUID | None) -> list[Row]:
    """Every webhook's health, an organization's, or one webhook's (refused when --org is
    another organization's)."""
    if webhook is not None and org is None:
        org = await org_of_webhook(conn, webhook)
    if org is None:
        return await _all(conn, "admin_webhook_health_all", {})
    return await _all(conn, "admin_webhook_health_org", {"org": org, "webhook": webhook})
