"""`dispatcher demo`: the dispatcher working end to end on this machine, in plain words.

With no database configured it starts a throwaway PostgreSQL (dispatcher.demo.embedded)
and migrates it; with DISPATCHER_DATABASE_URL set it uses that database (schema
must be current) and deletes what it created at the end. It starts a local
receiver that verifies both signature schemes (dispatcher.demo.receiver), creates
an org and three webhooks, publishes events with publish_event(), and runs the
daemon in-process (the same App as `dispatcher run`) to show: a delivery on the
first try, a receiver failure retried into success, and one that ends in the
dead-letter queue and is replayed. It exits 0 by itself when all of that
happened and every request was verified, and leaves nothing running;
`--keep-running` keeps everything up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import socket
import uuid
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb

from dispatcher import db, migrations
from dispatcher.app import App
from dispatcher.demo.embedded import EmbeddedPostgres
from dispatcher.demo.patterns import matches_any
from dispatcher.demo.receiver import DemoReceiver, Endpoint
from dispatcher.errors import DatabaseUnavailable, ExitCode, SchemaBehind
from dispatcher.queries import query
from dispatcher.settings import Settings, load_settings, redact_dsn

Conn = psycopg.AsyncConnection[DictRow]

MAX_RETRIES = 2  # 3 attempts in all
BASE_DELAY = 1  # seconds; exponential: 1 s, then 2 s
EVENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("order.created", {"order_id": 1001, "total": "42.50", "currency": "EUR"}),
    ("order.paid", {"order_id": 1001, "method": "card"}),
    ("customer.created", {"customer_id": 77}),
)
EXPECTED = {"success": 4}  # the four deliveries, in the end
NEXT_STEPS = """\
   export DISPATCHER_DATABASE_URL='postgresql://USER:PASSWORD@HOST:5432/DBNAME'
   dispatcher migrate      # creates the dispatcher's schema (and the host tables if absent)
   dispatcher run          # the daemon; SIGTERM or Ctrl-C stops it gracefully
   README.md lists every setting; docs/operations.md covers systemd, containers and metrics."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`dispatcher demo` (dispatcher/cli.py calls this)."""
    p = sub.add_parser(
        "demo",
        help="show the dispatcher working end to end (starts a throwaway PostgreSQL)",
        description="Deliver sample events to a local receiver: a success, a retry, the "
        "dead-letter queue and a replay. Starts a throwaway PostgreSQL unless "
        "DISPATCHER_DATABASE_URL is set; stops everything it started at the end.",
    )
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="keep the database, receiver and dispatcher up until Ctrl-C",
    )
    p.add_argument(
        "--postgres",
        choices=("auto", "system", "pgserver"),
        default="auto",
        help="binaries of the throwaway PostgreSQL: the system's if installed (auto), "
        "or the pgserver wheel's",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=40.0,
        help="seconds the deliveries may take before the demo gives up (default 40)",
    )
    p.add_argument("--verbose", action="store_true", help="also print the daemon's log")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(Demo(args, settings).main())


class Demo:
    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args = args
        self.settings = settings
        url = settings.database_url.get_secret_value().strip() if settings.database_url else ""
        self.external_dsn = url or None
        self.org = uuid.uuid4()
        self.step = 0
        self.receiver = DemoReceiver(self.say)
        self.hooks: dict[str, tuple[Endpoint, list[str]]] = {}
        self._shown: dict[Any, tuple[str, int]] = {}  # delivery id -> (status, attempt) printed

    # -- output -------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def heading(self, text: str) -> None:
        self.step += 1
        self.say(f"\n{self.step}. {text}")

    # -- run ----------------------------------------------------------------------
    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            async with contextlib.AsyncExitStack() as stack:
                code = await self._scenario(stack)
                self.say("\nStopping the dispatcher, the receiver and the database ...")
                await stack.aclose()
                self.say("   done: nothing the demo started is still running.")
        except asyncio.CancelledError:
            self.say("\nInterrupted: everything the demo started has been stopped.")
            return ExitCode.INTERRUPTED
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        self.heading("Next: point `dispatcher run` at a real database")
        self.say(NEXT_STEPS)
        return code

    async def _scenario(self, stack: contextlib.AsyncExitStack) -> int:
        self.say(
            "webhook-dispatcher demo: events published in PostgreSQL become signed webhook\n"
            "requests, retried by the org's policy, dead-lettered when they keep failing,\n"
            "and replayed. Everything runs on this machine and stops at the end."
        )
        dsn = await self._database(stack)
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
        stack.push_async_callback(conn.close)
        await self.receiver.start()
        stack.push_async_callback(self.receiver.close)
        self.heading(
            f"Started a receiver on http://127.0.0.1:{self.receiver.port}. On every request it "
            "checks both\n   signature schemes, Standard Webhooks and X-InTime ('signatures OK' "
            "below)."
        )
        await self._create_org(conn)
        app = await self._start_daemon(stack, dsn)
        watcher = asyncio.create_task(self._watch(conn))
        stack.push_async_callback(_cancel, watcher)

        await self._publish(conn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.args.timeout
        if not await self._wait_statuses(conn, {"success": 3, "dlq": 1}, deadline):
            return ExitCode.FAILURE
        await self._flush(conn)
        self.heading(
            "'Analytics (down)' is in the dead-letter queue: 3 attempts, all failed.\n"
            "   Repairing that endpoint, then replaying the delivery with the SQL admin API,\n"
            "   `SELECT * FROM dispatcher.retry_dlq(org_id)`: like the host's retry button,\n"
            "   it sets the delivery back to 'pending', attempt 1."
        )
        self.hooks["/analytics"][0].down = False
        cur = await conn.execute(query("demo_replay_dlq"), {"org": self.org})
        replayed = await cur.fetchone()
        if not replayed or replayed["retried"] != 1:
            self.say(f"\nThe replay did not put one delivery back to pending: {replayed}.")
            return ExitCode.FAILURE
        if not await self._wait_statuses(conn, EXPECTED, deadline):
            return ExitCode.FAILURE
        await self._flush(conn)
        ok = self._summary()
        if self.args.keep_running:
            await self._keep_running(dsn, app)
        return ExitCode.OK if ok else ExitCode.FAILURE

    # -- steps --------------------------------------------------------------------
    async def _database(self, stack: contextlib.AsyncExitStack) -> str:
        if self.external_dsn is not None:
            dsn = self.external_dsn
            self.heading(
                f"Using the database in DISPATCHER_DATABASE_URL or DATABASE_URL\n"
                f"   ({redact_dsn(dsn)}).\n"
                "   The demo adds an organization 'Demo Org (dispatcher demo)' with three "
                "webhooks\n   and deletes it, with its events and deliveries, at the end."
            )
            try:
                async with await db.connect(self.settings) as conn:
                    await migrations.check_current(conn)
            except (DatabaseUnavailable, SchemaBehind) as exc:
                raise type(exc)(
                    f"{exc}; or unset DISPATCHER_DATABASE_URL and DATABASE_URL to run the "
                    "demo on a throwaway PostgreSQL"
                ) from None
            stack.push_async_callback(self._cleanup_org, dsn)
            return dsn
        pg = EmbeddedPostgres(self.args.postgres)
        stack.callback(pg.stop)
        self.heading("No DISPATCHER_DATABASE_URL is set: starting a throwaway PostgreSQL ...")
        dsn = pg.start()
        self.say(f"   {pg.description};\n   data in {pg.root}, reachable on a Unix socket only.")
        self.heading("Creating the schema (what `dispatcher migrate` does):")
        applied = await migrations.apply_migrations(dsn)
        self.say(f"   applied {', '.join(applied) or 'nothing: already current'}")
        return dsn

    async def _create_org(self, conn: Conn) -> None:
        name = "Demo Org" if self.external_dsn is None else "Demo Org (dispatcher demo)"
        slug = f"demo-{self.org.hex[:8]}"
        await conn.execute(query("demo_create_org"), {"org": self.org, "name": name, "slug": slug})
        await conn.execute(
            query("demo_retry_config"),
            {"org": self.org, "max_retries": MAX_RETRIES, "base_delay": BASE_DELAY, "max_delay": 5},
        )
        self.heading(
            f"Created organization '{name}': {MAX_RETRIES} retries ({BASE_DELAY} s, then "
            f"{BASE_DELAY * 2} s later), dead-letter queue on.\n   Three webhooks, each with "
            "its own 64-hex secret like the host's:"
        )
        specs = (
            ("/shop", Endpoint("Shop backend", secrets.token_hex(32)), ["order.*"], "answers 200"),
            (
                "/crm",
                Endpoint("CRM (flaky)", secrets.token_hex(32), 500, 1, why="a passing failure"),
                ["order.created"],
                "answers 500 once, then 200",
            ),
            (
                "/analytics",
                Endpoint("Analytics (down)", secrets.token_hex(32), 503, down=True, why="down"),
                ["order.paid"],
                "answers 503 until repaired",
            ),
        )
        for path, endpoint, events, behaviour in specs:
            self.receiver.endpoints[path] = endpoint
            self.hooks[path] = (endpoint, events)
            params = {
                "org": self.org,
                "name": endpoint.name,
                "url": self.receiver.url(path),
                "secret": endpoint.secret,
                "events": events,
            }
            await conn.execute(query("demo_create_webhook"), params)
            self.say(f"   {endpoint.name:<18} {path:<11} events {events[0]:<14} {behaviour}")

    async def _start_daemon(self, stack: contextlib.AsyncExitStack, dsn: str) -> App:
        settings = load_settings(
            database_url=dsn,
            allowed_target_networks="127.0.0.0/8",  # the receiver is on loopback
            poll_interval=0.2,
            shutdown_grace=2.0,
            metrics_address=f"127.0.0.1:{_free_port()}" if self.args.keep_running else "",
            # the story is webhooks: no OAuth refresh or failover of a configured database's
            # real integrations while it runs (nor their plaintext-token warning in the story)
            integrations_enabled=False,
        )
        app = App(settings, install_signals=False)
        task = asyncio.create_task(app.run(), name="daemon")
        stack.push_async_callback(_stop_app, app, task)
        ready = asyncio.ensure_future(app.ready.wait())
        await asyncio.wait([task, ready], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()  # a DispatcherError says what went wrong
        if not app.ready.is_set():
            raise TimeoutError("the dispatcher did not become ready within 30 s")
        self.heading(
            "Started the dispatcher in this process (the same code as `dispatcher run`):\n"
            "   connected, schema checked, listening for the doorbell (NOTIFY)."
        )
        return app

    async def _publish(self, conn: Conn) -> None:
        self.heading("Publishing three events with publish_event(), as the host application does:")
        async with conn.transaction():  # one commit: the doorbell rings once for all three
            for event_type, payload in EVENTS:
                params = {
                    "type": event_type,
                    "aggregate": uuid.uuid4(),
                    "payload": Jsonb(payload),
                    "org": self.org,
                }
                await conn.execute(query("demo_publish"), params)
                names = [
                    e.name for e, events in self.hooks.values() if matches_any(events, event_type)
                ]
                goes_to = (
                    ", ".join(names) if names else "no webhook subscribes to it: nothing is sent"
                )
                self.say(f"   {event_type:<16} -> {goes_to}")
        self.heading(
            "Deliveries (receiver: each request it got; dispatcher: each attempt recorded):"
        )

    async def _wait_statuses(self, conn: Conn, want: dict[str, int], deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        while True:
            cur = await conn.execute(query("demo_statuses"), {"org": self.org})
            have = {str(r["status"]): int(r["n"]) for r in await cur.fetchall()}
            if all(have.get(status, 0) >= n for status, n in want.items()):
                return True
            if loop.time() > deadline:
                self.say(f"\nGave up after {self.args.timeout:.0f} s: deliveries by status {have}.")
                return False
            await asyncio.sleep(0.1)

    async def _watch(self, conn: Conn) -> None:
        while True:
            await asyncio.sleep(0.1)
            await self._flush(conn)

    async def _flush(self, conn: Conn) -> None:
        """Print every delivery whose recorded outcome changed since the last look."""
        cur = await conn.execute(query("demo_deliveries"), {"org": self.org})
        for row in await cur.fetchall():
            key = (str(row["status"]), int(row["attempt_number"]))
            if key[0] == "pending" or self._shown.get(row["id"]) == key:
                continue  # new, claimed or replayed: nothing recorded yet
            self._shown[row["id"]] = key
            self.say(_describe_outcome(row))

    def _summary(self) -> bool:
        seen = self.receiver.seen
        verified = sum(1 for s in seen if s.verified)
        self.heading("Summary")
        self.say(
            "   4 deliveries, all delivered: 2 on the first try, 1 after a retry, 1 replayed\n"
            "   from the dead-letter queue; 'customer.created' matched no webhook."
        )
        self.say(
            f"   The receiver got {len(seen)} requests and verified {verified} of {len(seen)} "
            "with both signature schemes."
        )
        for s in seen:
            if not s.verified:
                self.say(f"   NOT verified: {s.path} {s.event_type}: {'; '.join(s.problems)}")
        return self.receiver.all_verified

    async def _keep_running(self, dsn: str, app: App) -> None:
        port = app.health.port if app.health else None
        self.heading("Still running (--keep-running). Press Ctrl-C to stop everything.")
        self.say(f"   database:  psql '{dsn}'")
        self.say(
            "   publish:   SELECT publish_event('order.created', NULL, '{}'::jsonb, NULL, "
            f"'{{}}'::jsonb, '{self.org}');"
        )
        if port:
            self.say(f"   metrics:   http://127.0.0.1:{port}/metrics   (and /healthz, /readyz)")
        task = asyncio.current_task()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if task is not None:
                task.uncancel()

    async def _cleanup_org(self, dsn: str) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(query("demo_cleanup"), {"org": self.org})


def _describe_outcome(row: DictRow) -> str:
    """The delivery row's last attempt, in plain words."""
    status, n, most = str(row["status"]), int(row["attempt_number"]), int(row["max_attempts"])
    if status == "retrying":
        n -= 1  # while retrying, attempt_number is the next attempt to make
        result = f"retry in {max(0, round(float(row['retry_in'] or 0)))} s"
    elif status == "success":
        result = "delivered"
    elif status == "dlq":
        result = "dead-letter queue"
    else:
        result = f"failed: {row['error_message']}"
    code = int(row["response_status"] or 0)
    http = f"HTTP {code}" if code else "network error"
    return (
        f"   dispatcher {row['webhook_name']:<17} {row['event_type']:<14} attempt {n}/{most}: "
        f"{http}, {row['duration_ms']} ms -> {result}"
    )


async def _stop_app(app: App, task: asyncio.Task[Any]) -> None:
    app.request_stop()
    await asyncio.wait([task], timeout=20)
    if task.done() and not task.cancelled():
        task.result()  # the daemon's own error, if it crashed


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
