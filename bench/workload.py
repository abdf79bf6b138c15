"""What the benchmark sends: the event payload, host-side setup, backlog publishing and the
paced publisher of the latency test.

The payload is sized so that the request body the daemon builds (the event envelope with
the payload as ``data``) is about 1 KB, like the issue's reference figures.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.infra import q

EVENT_TYPE = "job.created"
TARGET_BODY_BYTES = 1024

_BASE: dict[str, Any] = {
    "job": {
        "id": "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f",
        "title": "Senior Backend Engineer",
        "department": "Engineering",
        "location": "Remote (EU)",
        "employment_type": "full_time",
        "status": "open",
        "salary": {"min": 70000, "max": 95000, "currency": "EUR"},
        "tags": ["python", "postgresql", "distributed-systems"],
        "hiring_manager_id": "0b7e1a52-91c4-4f0e-9d8e-2f5b6c7d8e9f",
    },
    "actor": {"id": "3c9d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f", "email": "recruiter@example.com"},
}


def envelope(payload: Any, event_id: str | None = None) -> dict[str, Any]:
    """The body the daemon sends for an event (same keys as the delivery_fan_out query builds)."""
    return {
        "id": event_id or str(uuid.uuid4()),
        "data": payload,
        "type": EVENT_TYPE,
        "event": EVENT_TYPE,
        "org_id": "00000000-0000-0000-0000-000000000001",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "aggregate_id": str(uuid.uuid4()),
    }


def jsonb_text(value: Any) -> str:
    """JSON as PostgreSQL prints jsonb (``", "`` and ``": "`` separators)."""
    return json.dumps(value, separators=(", ", ": "), ensure_ascii=False)


def _make_payload() -> dict[str, Any]:
    payload = {**_BASE, "seq": 0, "notes": ""}
    size = len(jsonb_text(envelope(payload)).encode())
    payload["notes"] = "lorem ipsum " * ((TARGET_BODY_BYTES - size) // 12)
    del payload["seq"]  # publish_backlog adds it back per event
    return payload


PAYLOAD = _make_payload()


def sample_body() -> bytes:
    """A request body of the same shape and size as the daemon's, for the ceiling."""
    return jsonb_text(envelope({**PAYLOAD, "seq": 1})).encode()


@dataclass
class Hooks:
    orgs: list[uuid.UUID]
    secret: str


async def create_webhooks(
    conn: psycopg.AsyncConnection[Any], url: str, *, orgs: int, per_org: int
) -> Hooks:
    """`orgs` organisations with `per_org` webhooks each, every one subscribed to EVENT_TYPE."""
    secret = secrets.token_hex(32)
    ids = [uuid.uuid4() for _ in range(orgs)]
    for i, org in enumerate(ids):
        await conn.execute(
            q("create_org"), {"id": org, "name": f"Org {i}", "slug": f"org-{i}-{org.hex[:6]}"}
        )
        for k in range(per_org):
            await conn.execute(
                q("create_webhook"),
                {
                    "org": org,
                    "name": f"hook {i}.{k}",
                    "url": f"{url}/{i}/{k}",
                    "secret": secret,
                    "events": [EVENT_TYPE],
                },
            )
    return Hooks(ids, secret)


async def publish_backlog(
    conn: psycopg.AsyncConnection[Any],
    orgs: list[uuid.UUID],
    count: int,
    chunk: int = 1000,
    *,
    keys: int = 0,
) -> None:
    """`count` events through publish_event(), round-robin over `orgs`, in chunks; with
    `keys`, each org's events carry an aggregate_id cycling through that many keys."""
    for lo in range(1, count + 1, chunk):
        hi = min(lo + chunk - 1, count)
        await conn.execute(
            q("publish_backlog_keyed" if keys else "publish_backlog"),
            {
                "event_type": EVENT_TYPE,
                "payload": Jsonb(PAYLOAD),
                "orgs": orgs,
                "lo": lo,
                "hi": hi,
                **({"keys": keys} if keys else {}),
            },
        )


class Publisher:
    """publish_event() in its own transaction per event, over a few connections; the commit
    time is ``time.time()`` right after COMMIT returns. Open loop: events start on schedule
    whatever earlier ones are doing."""

    def __init__(
        self,
        dsn: str,
        org: uuid.UUID | list[uuid.UUID],
        connections: int,
        *,
        floor: bool = False,
    ) -> None:
        self.dsn = dsn
        # also ring the floor pipeline's doorbell (bench/floor_latency.py) in each transaction
        self.statement = q("publish_one_floor" if floor else "publish_one")
        # several orgs: events go to them round-robin (one webhook each: the quiet ones)
        self.orgs = org if isinstance(org, list) else [org]
        self._next = 0
        self.n = connections
        self.free: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        self.commit_ms: list[float] = []
        self.commit_sent: dict[str, float] = {}  # event id -> time.time() before COMMIT
        self.first_commit = 0.0
        self.last_commit = 0.0

    async def open(self) -> None:
        for _ in range(self.n):
            self.free.put_nowait(await psycopg.AsyncConnection.connect(self.dsn, autocommit=True))

    async def close(self) -> None:
        while not self.free.empty():
            await self.free.get_nowait().close()

    async def one(self) -> tuple[str, float]:
        org = self.orgs[self._next % len(self.orgs)]
        self._next += 1
        conn = await self.free.get()
        try:
            t0 = time.perf_counter()
            async with conn.transaction():
                cur = await conn.execute(
                    self.statement,
                    {"event_type": EVENT_TYPE, "payload": Jsonb(PAYLOAD), "org": org},
                    prepare=True,
                )
                row = await cur.fetchone()
                sending = time.time()
            committed = time.time()
            self.commit_ms.append((time.perf_counter() - t0) * 1000)
            self.commit_sent[str(row[0]) if row else ""] = sending
        finally:
            self.free.put_nowait(conn)
        assert row is not None
        return str(row[0]), committed

    async def paced(self, rate: float, seconds: float) -> dict[str, float]:
        """Offer `rate` events/s for `seconds`; returns {event_id: commit time}."""
        self.commit_ms.clear()
        count = max(1, int(rate * seconds))
        start = time.monotonic() + 0.01
        tasks = []
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one()))
        done = dict(await asyncio.gather(*tasks))
        times = sorted(done.values())
        self.first_commit, self.last_commit = times[0], times[-1]
        return done
