"""The durable floor: the least work an at-least-once dispatcher that records every attempt in
the host's ``webhook_deliveries`` must do, run as its own process (issue 12).

    python -m bench.floor DSN WEBHOOK_ID [--writes 2|3] [--batch N] [--cap N] [--real PIECES]

It drains ``dispatcher.outbox`` to ONE webhook (its id, URL and secret read once at start):

- ``--writes 2`` (scenario ``floor``): per batch, one statement deletes N outbox rows and
  inserts their delivery rows already leased (``floor_take``); each row is POSTed once
  (aiohttp, one HMAC signature, at most ``--cap`` requests in flight, 32 like the daemon's
  per-webhook cap); one statement per batch writes the outcomes (``floor_record``). Two
  writes of each delivery row.
- ``--writes 3`` (scenario ``floor3``): the same, but the rows are inserted ``pending``
  (``floor_take_pending``) and leased by a second statement that finds them through the
  due index (``floor_lease``): the pending-then-leased path of drain1, three writes per row.

Nothing else: no pattern matching (one webhook, known up front), no ordering or sequence
numbers, no lease re-checks, no metrics, no retries (a failed attempt is recorded
``retrying``, left for someone else). The sessions get the daemon's speed settings
(``default_toast_compression=lz4`` when the server has it, dispatcher/db.py). It runs until
SIGTERM (exit 0), polling an empty outbox every 50 ms, like the daemon.

The ladder (issue 12; scenarios ``rung_request`` ... ``rung_outcome``): ``--real`` (with
``--writes 3``) swaps floor pieces, any of them, for the daemon's own, called as the daemon
calls them (dispatcher/dispatch.py, sender.py, recorder.py), with the loop above unchanged:

- ``request``: the daemon's request, ``dispatcher.request.build_request`` (both signature
  schemes, every header: webhook-id from ``message_id``, User-Agent, X-InTime-*), signed by
  ``signer_for``; the rows are leased by ``floor_lease_wide`` (event id, org, type and claim token
  returned too). Without the real claim the X-InTime-Sequence number is a local counter (the
  header is sent; the number is the claim's once ``claim`` is real).
- ``fanout``: ``delivery_fan_out_lean`` instead of ``floor_take_pending``, with the daemon's
  parameters in a held-back one-webhook drain (1,000 events, HELD_BACK_EVENTS; up to
  ``--batch`` rows leased at once, within the webhook's room) and the rows it leases started.
- ``claim``: ``delivery_claim_due`` instead of ``floor_lease`` (limit ``--batch``, scan 4x).
- ``outcome``: the recorder's statement (``delivery_record_outcomes_lean``, or the full one
  for a keyed row) on ``recorder.OutcomeRow`` rows as ``outcomes_json`` writes them, the
  transition from ``transitions.after_attempt``, the response's headers recorded, and
  ``delivery_apply_webhook_counters`` when the recorder would run it.

The room passed to the fan-out and the claim (``room_params``) is what
``Admission.claim_params()`` gives a webhook held back by its cap with nothing else limiting
it: cap + claim-ahead (2 x cap) - in flight - queued. The floor's own loop (its queue, its
``cap`` sender tasks, its recorder's batches) is unchanged: what is left between
``--real request,fanout,claim,outcome`` and the daemon is the daemon's Python loop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import aiohttp
import psycopg
from psycopg.rows import dict_row

from bench.infra import q
from bench.receiver import run_loop
from dispatcher.admission import FAILING_AFTER
from dispatcher.claims import DEFAULT_POLICY
from dispatcher.db import cache_long_statements
from dispatcher.outcomes import classify_status
from dispatcher.queries import query
from dispatcher.recorder import OutcomeRow, outcomes_json
from dispatcher.request import build_request, message_id, signer_for
from dispatcher.sender import Sender
from dispatcher.signing import sign_standard_with_keys, standard_webhooks_key
from dispatcher.transitions import after_attempt

LEASE_SECONDS = 90
RESPONSE_BODY_CHARS = 10_000
IDLE_POLL = 0.05
# --real: the daemon's pieces the floor can swap in (cumulative rungs in this order)
REAL = ("request", "fanout", "claim", "outcome")
FAN_OUT_EVENTS = 1000  # dispatch.HELD_BACK_EVENTS: a held-back one-webhook drain's fan-out

Conn = psycopg.AsyncConnection[dict[str, Any]]


@dataclass
class Row:
    id: str
    body: bytes
    # --real request / outcome: what the daemon's request and outcome row need
    event_id: UUID | None = None
    org_id: UUID | None = None
    event_type: str = ""
    sequence: int | None = None
    claim: datetime | None = None
    keyed: bool = False


@dataclass
class Outcomes:
    ids: list[UUID] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    codes: list[int | None] = field(default_factory=list)
    bodies: list[str | None] = field(default_factory=list)
    ms: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def room_params(webhook: UUID, cap: int, in_flight: int, queued: int) -> dict[str, Any]:
    """The room parameters of delivery_fan_out / delivery_claim_due as
    Admission.claim_params() gives them for one webhook held back by its cap (no rate limit,
    not failing): cap + claim-ahead (twice the cap, the default) - in flight - queued."""
    ahead = 2 * cap if cap > 1 else 0
    left = max(cap + ahead - in_flight - queued, 0)
    return {
        "room_ids": [webhook],
        "room_left": [left],
        "full_ids": [webhook] if left <= 0 else [],
        "hook_cap": cap + ahead,
        "failing_after": FAILING_AFTER,
    }


class Floor:
    def __init__(
        self,
        dsn: str,
        webhook: UUID,
        *,
        writes: int,
        batch: int,
        cap: int,
        real: frozenset[str] = frozenset(),
    ) -> None:
        self.dsn = dsn
        self.webhook = webhook
        self.writes = writes
        self.batch = batch
        self.cap = cap
        self.real = real
        self.queue: deque[Row] = deque()
        self.outcomes = Outcomes()
        self.real_outcomes: list[OutcomeRow] = []  # --real outcome
        self.sequence = 0  # --real request without the real claim: X-InTime-Sequence
        self.outcome_seq = 0  # OutcomeRow.seq, as the recorder numbers them
        self.counters_due = True  # the recorder's first batch applies pending counters
        self.in_flight = 0
        self.wake_fetch = asyncio.Event()
        self.wake_send = asyncio.Event()
        self.wake_record = asyncio.Event()
        self.stopping = asyncio.Event()
        self.params: dict[str, Any] = {}

    async def _connect(self) -> Conn:
        conn = await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, row_factory=dict_row, application_name="bench-floor"
        )
        cur = await conn.execute(query("db_server_has_lz4"))
        row = await cur.fetchone()
        if row and row["lz4"]:  # the daemon's session setting (dispatcher/db.py)
            await conn.execute("SET default_toast_compression = lz4")
        return conn

    async def run(self) -> None:
        if self.real:
            cache_long_statements()  # as the daemon's dispatcher.db does: parsed once
        take = await self._connect()
        record = await self._connect()
        cur = await take.execute(q("floor_webhook"), {"webhook": self.webhook})
        hook = await cur.fetchone()
        if hook is None:
            raise SystemExit(f"webhook {self.webhook} not found")
        self.url = str(hook["url"])
        self.keys = [standard_webhooks_key(str(hook["secret"]))]
        self.secrets = (str(hook["secret"]),)
        self.params = {
            "webhook": self.webhook,
            "url": self.url,
            "max_attempts": hook["max_attempts"],
            "batch": self.batch,
            "lease": LEASE_SECONDS,
        }
        connector = aiohttp.TCPConnector(limit=self.cap)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tasks = [
                asyncio.create_task(self._fetcher(take)),
                asyncio.create_task(self._recorder(record)),
                *(asyncio.create_task(self._sender(session)) for _ in range(self.cap)),
            ]
            stop = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in [stop, *tasks]:
                t.cancel()
            await asyncio.gather(stop, *tasks, return_exceptions=True)
        await take.close()
        await record.close()
        for t in done:  # a task that ended by itself failed: the exit status says so
            if t is not stop and not t.cancelled() and t.exception() is not None:
                raise RuntimeError("bench.floor failed") from t.exception()

    # ------------------------------------------------------------------ fetch
    async def _fetcher(self, conn: Conn) -> None:
        """Keeps at least `cap` leased rows waiting beside the `cap` in flight."""
        while True:
            if len(self.queue) >= self.cap:
                self.wake_fetch.clear()
                await self.wake_fetch.wait()
                continue
            rows = await self._take(conn)
            if rows:
                self.queue.extend(rows)
                self.wake_send.set()
            else:
                await asyncio.sleep(IDLE_POLL)

    async def _take(self, conn: Conn) -> list[Row]:
        if self.real:
            return await self._take_real(conn)
        if self.writes == 2:
            cur = await conn.execute(q("floor_take"), self.params, prepare=True)
        else:
            # three writes: insert pending rows for the next batch when none are left, then
            # lease a batch of pending rows found through the due index
            cur = await conn.execute(q("floor_lease"), self.params, prepare=True)
            if cur.rowcount <= 0:
                await conn.execute(q("floor_take_pending"), self.params, prepare=True)
                cur = await conn.execute(q("floor_lease"), self.params, prepare=True)
        return [Row(str(r["id"]), r["request_body"].encode()) for r in await cur.fetchall()]

    def _room(self) -> dict[str, Any]:
        return room_params(self.webhook, self.cap, self.in_flight, len(self.queue))

    async def _take_real(self, conn: Conn) -> list[Row]:
        """_take with the --real pieces: lease due rows (floor_lease_wide, or the daemon's
        delivery_claim_due); when none are due, create more (floor_take_pending, or the
        daemon's delivery_fan_out_lean, whose leased rows start at once)."""
        rows = await self._lease(conn)
        if rows:
            return rows
        if "fanout" in self.real:
            args = {
                "lease": LEASE_SECONDS,
                **self._room(),
                "batch": FAN_OUT_EVENTS,
                "claim": self.batch,
                "only": None,
            }
            cur = await conn.execute(query("delivery_fan_out_lean"), args)
            got = await cur.fetchall()
            if got and got[-1]["ordered_refused"] is not False:
                raise RuntimeError("delivery_fan_out_lean refused: some webhook is ordered")
            leased = [self._row(r) for r in got if r["id"] is not None]
            if leased:
                return leased
        else:
            await conn.execute(q("floor_take_pending"), self.params, prepare=True)
        return await self._lease(conn)

    async def _lease(self, conn: Conn) -> list[Row]:
        if "claim" in self.real:
            args = {
                **self._room(),
                "lease": LEASE_SECONDS,
                "limit": self.batch,
                "scan": self.batch * 4,
            }
            cur = await conn.execute(query("delivery_claim_due"), args)
        else:
            cur = await conn.execute(q("floor_lease_wide"), self.params, prepare=True)
        return [self._row(r) for r in await cur.fetchall()]

    @staticmethod
    def _row(r: dict[str, Any]) -> Row:
        return Row(
            str(r["id"]),
            r["request_body"].encode(),
            event_id=r["event_id"],
            org_id=r["org_id"],
            event_type=r["event_type"] or "",
            sequence=r.get("sequence"),
            claim=r["claim"],
            # the claim statements say whether a row is of an ordered key; floor_lease_wide
            # does not (no webhook of the bench is ordered)
            keyed=bool(r.get("keyed")),
        )

    # ------------------------------------------------------------------ send
    async def _sender(self, session: aiohttp.ClientSession) -> None:
        while True:
            if not self.queue:
                self.wake_send.clear()
                await self.wake_send.wait()
                continue
            row = self.queue.popleft()
            if len(self.queue) < self.cap:
                self.wake_fetch.set()
            self.in_flight += 1
            try:
                await self._post(session, row)
            finally:
                self.in_flight -= 1
            self.wake_record.set()

    def _bare_headers(self, row: Row) -> dict[str, str]:
        """The floor's own request head: one Standard Webhooks signature, no other contract."""
        unix = str(int(time.time()))
        return {
            "Content-Type": "application/json",
            "webhook-id": row.id,
            "webhook-timestamp": unix,
            "webhook-signature": sign_standard_with_keys(row.id, unix, row.body, self.keys),
            "X-InTime-Delivery": row.id,
        }

    async def _post(self, session: aiohttp.ClientSession, row: Row) -> None:
        if self.real:
            await self._post_real(session, row)
            return
        headers = self._bare_headers(row)
        t0 = time.perf_counter()
        code: int | None = None
        text: str | None = None
        try:
            async with session.post(self.url, data=row.body, headers=headers) as resp:
                code = resp.status
                raw = await resp.content.read(RESPONSE_BODY_CHARS * 4)
                text = raw.decode("utf-8", "replace")[:RESPONSE_BODY_CHARS]
        except (aiohttp.ClientError, TimeoutError) as exc:
            text = type(exc).__name__
        o = self.outcomes
        o.ids.append(UUID(row.id))
        o.statuses.append("success" if code is not None and 200 <= code < 300 else "retrying")
        o.codes.append(code)
        o.bodies.append(text)
        o.ms.append(int((time.perf_counter() - t0) * 1000))

    async def _post_real(self, session: aiohttp.ClientSession, row: Row) -> None:
        """_post with the --real pieces: the daemon's request (request) and the recorder's
        outcome row (outcome)."""
        started = datetime.now(UTC)
        if "request" in self.real:
            sequence = row.sequence
            if sequence is None:  # not the real claim: a number of our own
                self.sequence += 1
                sequence = self.sequence
            assert row.event_id is not None
            built = build_request(
                delivery_id=row.id,
                event_type=row.event_type,
                body=row.body,
                signer=signer_for(self.secrets),
                msg_id=message_id(row.event_id, self.webhook, UUID(row.id)),
                sequence=sequence,
            )
            headers, recorded = built.headers, built.recorded_headers
        else:
            headers = recorded = self._bare_headers(row)
        t0 = time.perf_counter()
        code: int | None = None
        text: str | None = None
        response_headers: dict[str, str] | None = None
        try:
            async with session.post(
                self.url, data=row.body, headers=headers, allow_redirects=False
            ) as resp:
                code = resp.status
                response_headers = Sender._headers(resp)  # the daemon's recorded headers
                raw = await resp.content.read(RESPONSE_BODY_CHARS * 4)
                text = raw.decode("utf-8", "replace")[:RESPONSE_BODY_CHARS]
        except (aiohttp.ClientError, TimeoutError) as exc:
            text = type(exc).__name__
        ms = int((time.perf_counter() - t0) * 1000)
        if "outcome" not in self.real:
            o = self.outcomes
            o.ids.append(UUID(row.id))
            o.statuses.append("success" if code is not None and 200 <= code < 300 else "retrying")
            o.codes.append(code)
            o.bodies.append(text)
            o.ms.append(ms)
            return
        assert row.claim is not None and row.org_id is not None
        outcome = classify_status(code or 0)
        t = after_attempt(
            outcome=outcome,
            attempt=1,
            max_attempts=int(self.params["max_attempts"]),
            policy=DEFAULT_POLICY,
        )
        self.real_outcomes.append(
            OutcomeRow(
                id=UUID(row.id),
                webhook_id=self.webhook,
                org_id=row.org_id,
                claim=row.claim,
                status=t.status,
                outcome=outcome.value,
                attempt=1,
                attempt_number=t.attempt_number,
                retry_in=t.retry_in,
                final=t.final,
                counts=t.counts_as_failure,
                success=t.success,
                gone=t.gone,
                request_url=self.url,
                request_headers=recorded,
                response_status=code or 0,
                response_headers=response_headers,
                response_body=text if code is not None else None,
                duration_ms=ms,
                error_message=None if t.success else (text or f"HTTP {code}"),
                error_code=None if t.success else (f"http_{code}" if code else "network"),
                started_at=started,
                ended_at=datetime.now(UTC),
                keyed=row.keyed,
            )
        )

    # ------------------------------------------------------------------ record
    async def _recorder(self, conn: Conn) -> None:
        """One statement per batch: whatever ended while the previous one ran (at least
        `cap` outcomes, or all there are once nothing is in flight)."""
        if "outcome" in self.real:
            await self._recorder_real(conn)
            return
        while True:
            busy = self.in_flight or self.queue or not self.outcomes
            if len(self.outcomes) < self.cap and busy:
                self.wake_record.clear()
                await self.wake_record.wait()
                continue
            batch, self.outcomes = self.outcomes, Outcomes()
            await conn.execute(
                q("floor_record"),
                {
                    "ids": batch.ids,
                    "statuses": batch.statuses,
                    "codes": batch.codes,
                    "bodies": batch.bodies,
                    "ms": batch.ms,
                },
                prepare=True,
            )

    async def _recorder_real(self, conn: Conn) -> None:
        """_recorder's batches written as the daemon's recorder writes them
        (Recorder._write, Recorder.run): the lean outcome statement unless a row is keyed,
        then delivery_apply_webhook_counters while streak changes are pending."""
        while True:
            busy = self.in_flight or self.queue or not self.real_outcomes
            if len(self.real_outcomes) < self.cap and busy:
                self.wake_record.clear()
                await self.wake_record.wait()
                continue
            batch, self.real_outcomes = self.real_outcomes, []
            for row in batch:
                self.outcome_seq += 1
                row.seq = self.outcome_seq
            name = (
                "delivery_record_outcomes"
                if any(row.keyed for row in batch)
                else "delivery_record_outcomes_lean"
            )
            cur = await conn.execute(query(name), {"rows": outcomes_json(batch)})
            got = await cur.fetchone()
            assert got is not None
            if int(got["recorded"]) != len(batch) or got["busy"] or got["lost"]:
                raise RuntimeError(f"outcomes not recorded: {dict(got)}")
            if got["webhooks"] or got["counters_pending"]:
                self.counters_due = True
            if self.counters_due:
                cur = await conn.execute(query("delivery_apply_webhook_counters"))
                applied = await cur.fetchone()
                self.counters_due = bool(applied and applied["waiting"])


def parse_real(text: str) -> frozenset[str]:
    pieces = frozenset(p.strip() for p in text.split(",") if p.strip())
    unknown = pieces - set(REAL)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown piece(s) {', '.join(sorted(unknown))}; known: {','.join(REAL)}"
        )
    return pieces


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    p.add_argument("dsn")
    p.add_argument("webhook", type=UUID)
    p.add_argument("--writes", type=int, choices=(2, 3), default=2)
    p.add_argument("--batch", type=int, default=64, help="events per take statement")
    p.add_argument("--cap", type=int, default=32, help="requests in flight (per-webhook cap)")
    p.add_argument(
        "--real",
        type=parse_real,
        default=frozenset(),
        help=f"comma-separated pieces among {','.join(REAL)}: the daemon's own (--writes 3)",
    )
    args = p.parse_args(argv)
    if args.real and args.writes != 3:
        p.error("--real needs --writes 3 (the daemon's rows are inserted pending, then leased)")
    return args


async def _main(args: argparse.Namespace) -> None:
    floor = Floor(
        args.dsn,
        args.webhook,
        writes=args.writes,
        batch=args.batch,
        cap=args.cap,
        real=args.real,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, floor.stopping.set)
    await floor.run()


def main(argv: list[str] | None = None) -> int:
    run_loop(_main(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
