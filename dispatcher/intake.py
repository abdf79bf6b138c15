"""Fan-out safety: batches that exceed statement_timeout shrink down to one event, an
event that still cannot be fanned out alone is quarantined, and outbox events this
role cannot read are reported (they stay in the outbox: delivery.sql, delivery_fan_out), and
so are events left in the outbox because a webhook row they need is held elsewhere.

Used by the dispatch loop (dispatch.py `_fan_out`); the state is this process's own.
"""

from __future__ import annotations

from uuid import UUID

import psycopg
import structlog

from dispatcher.db import Conn
from dispatcher.errors import ExitCode, SchemaBehind
from dispatcher.metrics import Metrics
from dispatcher.queries import query

log = structlog.get_logger("dispatcher.intake")

GROW_AFTER = 4  # full passes at a shrunk size before the size doubles again
# A lone event is quarantined after this many consecutive statement timeouts: one could
# be a lock held for a moment by a host transaction, two in a row is the event itself.
QUARANTINE_AFTER = 2
SHOWN_IDS = 10  # event ids named in one log line


class IntakeNotInstalled(SchemaBehind):
    """public.events has no working intake trigger, or one that misses rows."""

    exit_code = ExitCode.SCHEMA_BEHIND


_FIX = "as the owner of public.events, run: SELECT dispatcher.install_intake();"


async def check_intake(conn: Conn) -> None:
    """At start: refuse (IntakeNotInstalled) when events would not reach the outbox, e.g.
    the host replaced `events` by a partitioned table after migrate (the statement trigger
    on a partitioned parent never sees rows inserted directly into a partition)."""
    cur = await conn.execute(query("intake_trigger"))
    row = await cur.fetchone()
    if row is None:
        return  # no public.events: migrate creates it; the schema check says so
    if row["partitioned"] and not row["row_trigger"]:
        raise IntakeNotInstalled(
            "public.events is partitioned but has no row intake trigger: events inserted "
            f"directly into a partition would never be delivered; {_FIX}"
        )
    if not row["partitioned"] and not row["statement_trigger"]:
        raise IntakeNotInstalled(
            "public.events has no enabled intake trigger (dispatcher_intake): new events "
            f"would never be delivered; {_FIX}"
        )


def is_statement_timeout(exc: psycopg.errors.QueryCanceled) -> bool:
    """A cancel by statement_timeout (not pg_cancel_backend or a client cancel)."""
    return "statement timeout" in (exc.diag.message_primary or str(exc))


class Intake:
    def __init__(self, batch_size: int, metrics: Metrics) -> None:
        self._full = max(batch_size, 1)
        self._metrics = metrics
        self.cap: int | None = None  # events per fan-out after timeouts; None: no cap
        self._suspect: tuple[UUID, int] | None = None  # a lone event and its timeouts
        self._full_passes = 0  # full passes at the current cap
        self.unreadable_count = 0

    async def narrow(self, conn: Conn, wanted: int) -> tuple[int, UUID | None]:
        """(events to take, the one event to take or None). While shrunk to one event,
        that event is named, so that a timeout is charged to the right one."""
        if self.cap is None:
            return wanted, None
        wanted = min(wanted, self.cap)
        if wanted > 1:
            return wanted, None
        cur = await conn.execute(query("intake_outbox_next"))
        row = await cur.fetchone()
        if row is None:
            return 0, None
        event_id: UUID = row["event_id"]
        return 1, event_id

    def succeeded(self, events: int) -> None:
        """A fan-out that took `events` events finished: after a few full passes, grow back
        towards the full batch (growing at once would take the poison event again in the
        very next pass; idle passes prove nothing)."""
        self._suspect = None
        if self.cap is None or events < self.cap:
            return
        self._full_passes += 1
        if self._full_passes >= GROW_AFTER:
            self._full_passes = 0
            self.cap = None if self.cap * 2 >= self._full else self.cap * 2

    async def timed_out(
        self, conn: Conn, exc: psycopg.errors.QueryCanceled, batch: int, only: UUID | None
    ) -> bool:
        """Handle a fan-out cancelled by statement_timeout; False when it was another
        kind of cancel (the caller re-raises). Nothing of the batch was written."""
        if not is_statement_timeout(exc):
            return False
        self._metrics.fanout_timeouts.inc()
        self._full_passes = 0
        if only is None or batch > 1:
            self.cap = max(batch // 2, 1)
            log.warning(
                "fan_out_timeout",
                events=batch,
                next_batch=self.cap,
                note="statement_timeout exceeded; retrying with a smaller batch",
            )
            return True
        times = self._suspect[1] + 1 if self._suspect and self._suspect[0] == only else 1
        if times < QUARANTINE_AFTER:
            self._suspect = (only, times)
            log.warning(
                "fan_out_timeout",
                events=1,
                event_id=str(only),
                note="statement_timeout exceeded by this event alone; trying it once more",
            )
            return True
        self._suspect = None
        await self._quarantine(conn, only, exc)
        return True

    async def _quarantine(
        self, conn: Conn, event_id: UUID, exc: psycopg.errors.QueryCanceled
    ) -> None:
        error = f"fan-out exceeded statement_timeout alone ({QUARANTINE_AFTER} times)"
        cur = await conn.execute(
            query("intake_quarantine_event"),
            {"event_id": event_id, "reason": "statement_timeout", "error": error},
        )
        row = await cur.fetchone()
        if row is None:  # another replica took it (or quarantined it) meanwhile
            return
        self._metrics.events_quarantined.inc()
        log.error(
            "event_quarantined",
            event_id=str(event_id),
            org_id=str(row["org_id"]) if row["org_id"] else None,
            event_type=row["event_type"],
            reason="statement_timeout",
            error=type(exc).__name__,
            note="moved to dispatcher.quarantine; the events behind it flow. "
            "See `dispatcher quarantine list`, retry with `dispatcher quarantine retry`",
        )

    def unreadable(self, event_ids: list[UUID]) -> None:
        """A fan-out took events this role could not read: they stayed in the outbox."""
        self._metrics.events_unreadable.inc(len(event_ids))
        self.unreadable_count = max(self.unreadable_count, len(event_ids))
        log.error(
            "events_unreadable",
            events=len(event_ids),
            event_ids=[str(e) for e in event_ids[:SHOWN_IDS]],
            note="these events stay in the outbox and are tried again with a backoff: "
            "the database role cannot read them in public.events (row-level security? "
            "give it BYPASSRLS or a SELECT policy), or they were deleted",
        )

    def deferred(self, events: int) -> None:
        """A fan-out left `events` events in the outbox: a webhook they match has its row
        held by another transaction (SELECT ... FOR UPDATE, DELETE). They are taken
        again a second later; the rest of the batch went on."""
        log.info(
            "fan_out_deferred",
            events=events,
            note="a webhook row these events need is locked by another transaction; "
            "they stay in the outbox and are tried again in 1 s",
        )
