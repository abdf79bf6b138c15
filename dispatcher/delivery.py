"""One delivery attempt, from a claimed row to the outcome handed to the recorder.

claimed row -> (a row that waited in the claim-ahead queue re-reads its webhook; a lease
eaten into by a lock wait is extended) -> Target -> the sender (request, signature, POST,
bounded answer, classification: sender.py) -> the transition (transitions.py) -> the
outcome row for the recorder, the metrics and the attempt's canonical log line.

When an attempt starts is the loop's decision (dispatch.py); no transaction is open
across the HTTP call. A row leased while stopping is set aside, never sent: the loop
releases it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

import psycopg
import structlog
from prometheus_client import Counter
from psycopg_pool import PoolTimeout

from dispatcher.admission import Admission
from dispatcher.claims import Claimed
from dispatcher.db import Pool
from dispatcher.logs import hot_info
from dispatcher.metrics import Metrics
from dispatcher.outcomes import Outcome
from dispatcher.queries import query
from dispatcher.recorder import Recorder, outcome_row
from dispatcher.request import CustomHeaders, message_id, parse_custom_headers, repeated_id_text
from dispatcher.sender import AttemptResult, Sender, Target
from dispatcher.settings import Settings
from dispatcher.tracing import Tracing
from dispatcher.transitions import NOT_ACTIVE, Transition, after_attempt, not_active

log = structlog.get_logger("dispatcher.delivery")

# A row is sent only if its lease surely outlasts the attempt (http_timeout) by this
# much; otherwise (a claim that waited on a lock) the lease is extended first.
LEASE_MARGIN = 5.0
# A row that waited longer than this in the claim-ahead queue (behind a slow endpoint)
# re-reads its webhook before it is sent; rows behind a fast endpoint wait milliseconds.
QUEUE_RECHECK = 0.25

# A webhook as a queued row re-reads it: (url, current secret, custom headers).
WebhookNow = tuple[str, str, CustomHeaders]


class Attempts:
    """Runs the attempts the loop starts (`deliver`), one task each.

    ``release_soon`` gives leased rows back in the background (changed webhook, lost
    recheck); ``set_aside`` keeps a row leased while stopping for the loop's final
    release; ``stopping`` says whether the loop is stopping.
    """

    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        sender: Sender,
        recorder: Recorder,
        metrics: Metrics,
        admission: Admission[Claimed],
        tracing: Tracing,
        *,
        release_soon: Callable[[list[Claimed]], None],
        set_aside: Callable[[Claimed], None],
        stopping: Callable[[], bool],
    ) -> None:
        self._s = settings
        self._pool = pool
        self._sender = sender
        self._recorder = recorder
        self._metrics = metrics
        self.admission = admission
        self._tracing = tracing
        self._release_soon = release_soon
        self._set_aside = set_aside
        self._is_stopping = stopping
        # webhook -> (when read, what it is now or None when not active): queued rows
        # behind a slow endpoint re-read their webhook at most once per QUEUE_RECHECK
        self._webhooks_seen: dict[UUID, tuple[float, WebhookNow | None]] = {}
        # per attempt: a line only when it is emitted, a metric child looked up once
        self._log_attempts = settings.log_level in ("debug", "info")
        self._attempts_counter: dict[str, Counter] = {}

    @property
    def _stopping(self) -> bool:
        return self._is_stopping()

    async def deliver(self, d: Claimed) -> None:
        """One attempt of `d`, from its claim to its outcome handed to the recorder; a
        row that will not be sent here is set aside or released instead."""
        if self._stopping:
            self._set_aside(d)  # leased by a pass that ended after the stop signal
            return
        if d.queued_at is not None and time.monotonic() - d.queued_at > QUEUE_RECHECK:
            # It waited behind a slow endpoint: the webhook may have been switched off,
            # deleted or edited meanwhile. Re-read it; an edited one is claimed afresh.
            if not await self._recheck(d):
                return
        if not d.active:
            self._record(d, None, not_active(d.attempt), NOT_ACTIVE)
            return
        if d.lease_until - time.monotonic() < self._s.http_timeout + LEASE_MARGIN:
            # The claim waited (on a lock) long enough to eat into the lease: extend it
            # first, or the row could be retaken and sent again while this attempt runs.
            if not await self._extend(d):
                return
            if self._stopping:
                self._set_aside(d)
                return
        d.sent_at = datetime.now(UTC)
        span = None
        if self._tracing.enabled:
            span = self._tracing.start(
                delivery_id=str(d.id),
                webhook_id=str(d.webhook_id),
                event_id=str(d.event_id) if d.event_id else None,
                event_type=d.event_type,
                attempt=d.attempt,
                max_attempts=d.max_attempts,
                url=d.url,
                traceparent=d.traceparent,
            )
        traceparent = span.traceparent if span is not None else d.traceparent
        try:
            result = await self._sender.attempt(
                Target(
                    str(d.id),
                    d.event_type,
                    d.url,
                    d.request_body,
                    d.secrets,
                    d.headers,
                    message_id(d.event_id, d.webhook_id, d.id),
                    org_id=repeated_id_text(d.org_id),
                    traceparent=traceparent,
                    sequence=d.sequence,
                )
            )
        except BaseException as exc:  # cancelled at shutdown, or a bug: the span still ends
            self._tracing.fail(span, exc)
            if isinstance(exc, asyncio.CancelledError):
                log.info(
                    "attempt_aborted",
                    delivery_id=d.id,
                    webhook_id=d.webhook_id,
                    reason="our own graceful stop: the grace period ended during the attempt",
                    note="not recorded as a failure; released, sent again with the same webhook-id",
                )
            raise
        t = after_attempt(
            outcome=result.outcome,
            attempt=d.attempt,
            max_attempts=d.max_attempts,
            policy=d.policy,
            retry_after=result.retry_after,
            charged=result.charged,
        )
        if span is not None:
            self._tracing.end(
                span,
                outcome=result.outcome.value,
                status=t.status,
                response_status=result.response_status,
                duration_ms=result.duration_ms,
                error_code=result.error_code,
            )
        self._record(d, result, t, result.error_message)

    async def _recheck(self, d: Claimed) -> bool:
        """Refresh a queued row's webhook status before sending; False (and released, not
        sent) when its URL, secret or headers changed or the webhook cannot be read."""
        now = time.monotonic()
        seen = self._webhooks_seen.get(d.webhook_id)
        if seen is not None and now - seen[0] <= QUEUE_RECHECK:
            current = seen[1]  # read for another of its rows just now: one read per webhook
        else:
            try:
                async with self._pool.connection(timeout=5) as conn:
                    cur = await conn.execute(query("delivery_webhook_now"), {"id": d.webhook_id})
                    row = await cur.fetchone()
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("webhook_recheck_failed", delivery_id=d.id, error=type(exc).__name__)
                self._release_soon([d])
                return False
            current = (
                None
                if row is None or row["deleted_at"] is not None or row["status"] != "active"
                else (row["url"], row["secret"] or "", parse_custom_headers(row["headers"]))
            )
            if len(self._webhooks_seen) > 10_000:
                self._webhooks_seen.clear()
            self._webhooks_seen[d.webhook_id] = (now, current)
        if current is None:
            d.active = False
            return True
        if current != (d.url, d.secrets[0], d.headers):
            self._release_soon([d])
            return False
        return True

    async def _extend(self, d: Claimed) -> bool:
        """Renew d's lease from now; False (and nothing sent) if the claim is no longer ours."""
        sent = time.monotonic()
        try:
            async with self._pool.connection(timeout=5) as conn:
                cur = await conn.execute(
                    query("delivery_extend_claim"),
                    {"id": d.id, "claim": d.claim, "lease": self._s.lease_seconds},
                )
                row = await cur.fetchone()
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning(
                "claim_not_extended",
                delivery_id=d.id,
                error=type(exc).__name__,
                note="not sent now; due again when its lease ends",
            )
            return False
        if row is None:
            log.info("claim_lost_before_send", delivery_id=d.id, note="not sent by this process")
            return False
        d.claim = row["claim"]
        d.lease_until = sent + self._s.lease_seconds
        log.info("claim_extended", delivery_id=d.id, reason="the claim waited on a lock")
        return True

    def _record(
        self, d: Claimed, r: AttemptResult | None, t: Transition, error: str | None
    ) -> None:
        row = outcome_row(d, r, t, error)
        self._recorder.put(row)
        self.admission.outcome(
            d.webhook_id, d.policy, success=row.success, counts=row.counts, gone=row.gone
        )
        outcome = row.outcome
        counter = self._attempts_counter.get(outcome)
        if counter is None:
            counter = self._attempts_counter[outcome] = self._metrics.attempts.labels(outcome)
        counter.inc()
        if r is not None and r.outcome is not Outcome.REFUSED:
            self._metrics.attempt_seconds.observe(r.duration_ms / 1000)
        if row.success and d.created_at is not None and row.ended_at is not None:
            # the attempt's end as recorded (outcome_row's one clock reading), not a second one
            waited = (row.ended_at - d.created_at).total_seconds()
            self._metrics.delivery_latency.observe(max(waited, 0.0))
        if not self._log_attempts:
            return
        hot_info(
            log,
            "delivery_attempt",
            delivery_id=d.id,
            webhook_id=d.webhook_id,
            event_id=d.event_id,
            org_id=d.org_id,
            event_type=d.event_type,
            attempt=d.attempt,
            max_attempts=d.max_attempts,
            outcome=outcome,
            status=t.status,
            response_status=r.response_status if r else None,
            duration_ms=r.duration_ms if r else None,
            retry_in=round(t.retry_in, 3) if t.retry_in is not None else None,
            error=row.error_message,
            notes=r.notes or None if r else None,
        )
