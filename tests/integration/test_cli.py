"""The operator CLI on a real database: every command, its output and its refusals.

Commands run in-process through dispatcher.cli.main (in a worker thread, so the test's
event loop keeps serving the receiver and the in-process daemon), plus a few real
`python -m dispatcher` subprocesses.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import hostdb
import pytest
import structlog
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from support.daemon import daemon_env
from support.net import reserved_port
from support.receiver import Reply

from dispatcher import cli
from dispatcher.admin.format import parse_duration, parse_time, table
from dispatcher.errors import InvalidInput

Conn = hostdb.Conn
PUBLIC_URL = "https://93.184.216.34/hook"  # a public literal address: no DNS, no warning


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def refused(self, code: int, *words: str) -> None:
        """Non-zero exit, nothing on stdout, one `dispatcher: error:` line naming `words`."""
        assert self.code == code, (self.code, self.out, self.err)
        assert self.out == ""
        lines = self.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dispatcher: error: "), self.err
        for word in words:
            assert word in lines[0], (word, lines[0])


def _main(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # --help and argparse usage errors
        return int(exc.code or 0)


@pytest.fixture
def run(db_dsn, monkeypatch, capsys):
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", db_dsn)

    async def run_(*argv: str) -> Result:
        # cli.main configures logging for the process: put it back afterwards, so an
        # in-process daemon never logs to this test's (soon closed) captured stderr.
        saved = structlog.get_config()
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        capsys.readouterr()
        try:
            code = await asyncio.to_thread(_main, list(argv))
        finally:
            structlog.configure(**saved)
            root.handlers[:] = handlers
            root.setLevel(level)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run_


async def one(conn: Conn, sql: str, params: Any = ()) -> dict[str, Any]:
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def snapshot(conn: Conn) -> list[Any]:
    """Everything the commands could change, to prove a refusal changed nothing."""
    out = []
    for table_name in (
        "webhooks",
        "webhook_deliveries",
        "integration_retry_config",
        "dispatcher.webhook_secrets",
    ):
        cur = await conn.execute(f"SELECT * FROM {table_name} ORDER BY 1")
        out.append([dict(r) for r in await cur.fetchall()])
    return out


async def insert_delivery(
    conn: Conn, org, hook, status: str, *, age=timedelta(0), event_type: str = "job.created"
) -> uuid.UUID:
    row = await one(
        conn,
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body, status, attempt_number, max_attempts, created_at)"
        " VALUES (%s, %s, %s, '{}', %s, '{}', '{}', %s, 4, 4, now() - %s) RETURNING id",
        (org, hook["id"], event_type, hook["url"], status, age),
    )
    return row["id"]


def whsec(secret: str) -> str:
    return "whsec_" + base64.b64encode(secret.encode()).decode()


# -- parsing -------------------------------------------------------------------------------


def test_times_are_iso_8601_or_ages():
    now = datetime(2025, 12, 5, 14, 0, tzinfo=UTC)
    assert parse_time("2h", now=now) == now - timedelta(hours=2)
    assert parse_time("3d ago", now=now) == now - timedelta(days=3)
    assert parse_time("90s", now=now) == now - timedelta(seconds=90)
    assert parse_time("1w", now=now) == now - timedelta(weeks=1)
    assert parse_time("now", now=now) == now
    assert parse_time("2025-12-05T15:00:00+01:00") == now
    assert parse_time("2025-12-05T14:00:00Z") == now
    assert parse_time("2025-12-05 14:00") == now  # no offset: UTC
    assert parse_time("2025-12-05") == now.replace(hour=0)
    for bad in ("yesterday", "2h30", "-2h", "2025-13-01", ""):
        with pytest.raises(InvalidInput, match="not a time"):
            parse_time(bad, "--since")


def test_durations_and_tables():
    assert parse_duration("24h") == timedelta(hours=24)
    assert parse_duration("0") == timedelta(0)
    assert parse_duration("30m") == timedelta(minutes=30)
    for bad in ("2h ago", "soon", "-1h"):
        with pytest.raises(InvalidInput, match="not a duration"):
            parse_duration(bad, "--grace")
    text = table([{"a": "x", "b": None}, {"a": "longer", "b": [1, 2]}], [("a", "A"), ("b", "B")])
    assert text.splitlines() == ["A       B", "x       -", "longer  1, 2"]


# -- help ------------------------------------------------------------------------------------

COMMANDS = [
    "webhooks",
    "webhooks list",
    "webhooks show",
    "webhooks add",
    "webhooks enable",
    "webhooks disable",
    "webhooks rotate-secret",
    "webhooks test",
    "deliveries",
    "deliveries list",
    "deliveries show",
    "deliveries replay",
    "dlq",
    "dlq list",
    "dlq retry",
    "dlq clear",
    "recover",
    "retry-config",
    "retry-config show",
    "retry-config set",
    "stats",
]


@pytest.mark.parametrize("command", COMMANDS)
async def test_every_command_has_help(run, command):
    r = await run(*command.split(), "--help")
    assert r.code == 0
    assert r.out.startswith(f"usage: dispatcher {command}")
    if command.count(" ") or command in ("recover", "stats"):
        assert "--json" in r.out


# -- webhooks ----------------------------------------------------------------------------------


async def test_webhooks_add_list_show(run, conn):
    org = await hostdb.create_org(conn)
    r = await run(
        "webhooks",
        "add",
        "--org",
        str(org),
        "--name",
        "Payroll",
        "--url",
        PUBLIC_URL,
        "--events",
        "job.created,job.*",
        "--events",
        "candidate.*",
        "--header",
        "X-Tenant=acme",
        "--header",
        "Authorization: Bearer tok-123",
        "--description",
        "payroll sync",
        "--json",
    )
    assert r.code == 0 and r.err == "", r.err
    made = r.json()
    hook = await hostdb.webhook(conn, uuid.UUID(made["id"]))
    assert made["secret"] == hook["secret"] and len(hook["secret"]) == 64
    assert hook["events"] == ["job.created", "job.*", "candidate.*"]
    assert hook["headers"] == {"X-Tenant": "acme", "Authorization": "Bearer tok-123"}
    assert hook["status"] == "active" and hook["org_id"] == org
    assert hook["description"] == "payroll sync"

    r = await run(
        "webhooks",
        "add",
        "--org",
        str(org),
        "--name",
        "Off",
        "--url",
        PUBLIC_URL,
        "--events",
        "*",
        "--inactive",
        "--secret",
        "ab" * 32,
    )
    assert r.code == 0 and "ab" * 32 in r.out and "status:               inactive" in r.out

    r = await run("webhooks", "list")
    assert r.code == 0
    header, *lines = r.out.strip().splitlines()
    assert header.split()[:4] == ["ID", "ORG", "NAME", "STATUS"]
    assert len(lines) == 2 and "Payroll" in lines[0] and hook["secret"] not in r.out
    r = await run("webhooks", "list", "--status", "inactive", "--org", str(org), "--json")
    assert [w["name"] for w in r.json()] == ["Off"]

    r = await run("webhooks", "show", made["id"])
    assert r.code == 0 and "Payroll" in r.out and "hidden (--show-secret" in r.out
    assert hook["secret"] not in r.out and "tok-123" not in r.out and "acme" in r.out
    r = await run("webhooks", "show", made["id"], "--json")
    assert "secret" not in r.json() and r.json()["headers"]["Authorization"] == "[hidden]"
    r = await run("webhooks", "show", made["id"], "--show-secret", "--json")
    assert r.json()["secret"] == hook["secret"]
    assert r.json()["headers"]["Authorization"] == "Bearer tok-123"


ADD_REFUSALS = [
    (["--url", "ftp://example.com/x"], 2, "scheme 'ftp'"),
    (["--url", "http://10.0.0.5/hook"], 2, "SSRF guard"),
    (["--url", "https://user:pw@93.184.216.34/"], 2, "credentials"),
    (["--url", "not a url"], 2, "invalid webhook URL"),
    (["--url", "https://api..example.com/hook"], 2, "empty label"),
    (["--url", "https://" + "a" * 64 + ".example.com/"], 2, "at most 63"),
    (["--events", " , "], 2, "--events"),
    (["--events", "job created"], 2, "whitespace"),
    (["--secret", "ABC"], 2, "--secret"),
    (["--header", "X-Bad"], 2, "NAME=VALUE"),
    (["--header", "Bad Name=1"], 2, "not a valid HTTP header name"),
    (["--name", "x" * 101], 2, "--name"),
    (["--org", "acme"], 2, "not a UUID"),
    (["--org", str(uuid.UUID(int=7))], 1, "does not exist"),
]


@pytest.mark.parametrize(
    ("change", "code", "words"), ADD_REFUSALS, ids=[" ".join(c[0])[:30] for c in ADD_REFUSALS]
)
async def test_webhooks_add_refuses_bad_input_and_changes_nothing(run, conn, change, code, words):
    org = await hostdb.create_org(conn)
    args = {"--org": str(org), "--name": "n", "--url": PUBLIC_URL, "--events": "job.*"}
    args.update(dict(zip(change[::2], change[1::2], strict=True)))
    before = await snapshot(conn)
    r = await run("webhooks", "add", *[x for kv in args.items() for x in kv])
    r.refused(code, words)
    assert await snapshot(conn) == before


async def test_webhooks_add_warns_about_what_may_fail_later(run, conn, monkeypatch):
    monkeypatch.setenv("DISPATCHER_ALLOWED_TARGET_NETWORKS", "")
    org = await hostdb.create_org(conn)
    r = await run(
        "webhooks",
        "add",
        "--org",
        str(org),
        "--name",
        "local",
        "--url",
        "http://localhost:8080/hook",
        "--events",
        "*",
        "--header",
        "X-InTime-Event=x",
    )
    assert r.code == 0
    warnings = r.err.strip().splitlines()
    assert all(w.startswith("dispatcher: warning: ") for w in warnings)
    assert any("X-InTime-Event" in w for w in warnings)
    assert any("http://" in w for w in warnings)
    assert any("refuse" in w and "localhost" in w for w in warnings), warnings
    cur = await conn.execute("SELECT url FROM webhooks WHERE org_id = %s", (org,))
    assert [r["url"] for r in await cur.fetchall()] == ["http://localhost:8080/hook"]


async def test_webhooks_enable_and_disable(run, conn):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, PUBLIC_URL, status="disabled")
    await conn.execute("UPDATE webhooks SET consecutive_failures = 12 WHERE id = %s", (hook["id"],))
    r = await run("webhooks", "enable", str(hook["id"]))
    assert r.code == 0 and "is active" in r.out and "hold was released: 0 held" in r.out
    w = await hostdb.webhook(conn, hook["id"])
    assert w["status"] == "active" and w["consecutive_failures"] == 0
    r = await run("webhooks", "disable", str(hook["id"]), "--json")
    assert r.code == 0 and r.json()["status"] == "inactive"
    assert (await hostdb.webhook(conn, hook["id"]))["status"] == "inactive"

    (await run("webhooks", "enable", str(uuid.UUID(int=1)))).refused(1, "does not exist")
    (await run("webhooks", "disable", "12")).refused(2, "not a UUID")
    await conn.execute("UPDATE webhooks SET deleted_at = now() WHERE id = %s", (hook["id"],))
    (await run("webhooks", "enable", str(hook["id"]))).refused(1, "does not exist")
    (await run("webhooks", "show", str(hook["id"]))).refused(1, "does not exist")
    assert (await hostdb.webhook(conn, hook["id"]))["status"] == "inactive"


async def test_rotated_secret_old_one_still_verifies(run, conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url(), ["job.*"])
    old = hook["secret"]
    await start_daemon()

    r = await run("webhooks", "rotate-secret", str(hook["id"]))
    assert r.code == 0 and "keeps signing until" in r.out
    new = r.out.split("new secret: ")[1].split()[0]
    assert new == (await hostdb.webhook(conn, hook["id"]))["secret"] != old

    await hostdb.publish(conn, "job.created", {"n": 1}, org)
    [req] = await receiver.wait_for(1)
    signatures = req.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    # A receiver still configured with the old secret accepts, and so does an updated one.
    assert Webhook(whsec(old)).verify(req.body, dict(req.headers))["data"] == {"n": 1}
    assert Webhook(whsec(new)).verify(req.body, dict(req.headers))["data"] == {"n": 1}
    ts = req.headers["X-InTime-Timestamp"]
    mac = hmac.new(new.encode(), ts.encode() + b"." + req.body, hashlib.sha256).hexdigest()
    assert req.headers["X-InTime-Signature"] == "sha256=" + mac
    [row] = await hostdb.wait_deliveries(conn, "status = 'success'", 1)
    assert old not in json.dumps(row["request_headers"]) and new not in json.dumps(
        row["request_headers"]
    )

    # Rotating again with no grace: only the newest secret signs.
    r = await run("webhooks", "rotate-secret", str(hook["id"]), "--grace", "0", "--json")
    assert r.code == 0
    newest = r.json()["new_secret"]
    await hostdb.publish(conn, "job.created", {"n": 2}, org)
    [_, req] = await receiver.wait_for(2)
    assert len(req.headers["webhook-signature"].split(" ")) == 1
    Webhook(whsec(newest)).verify(req.body, dict(req.headers))
    with pytest.raises(WebhookVerificationError):
        Webhook(whsec(new)).verify(req.body, dict(req.headers))


async def test_rotate_secret_refuses_bad_grace(run, conn):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, PUBLIC_URL)
    before = await snapshot(conn)
    for grace in ("31d", "soon", "-1h", "2h ago"):
        r = await run("webhooks", "rotate-secret", str(hook["id"]), f"--grace={grace}")
        r.refused(2, "--grace")
    (await run("webhooks", "rotate-secret", str(uuid.UUID(int=3)))).refused(1, "does not exist")
    assert await snapshot(conn) == before


async def test_webhooks_test_prints_the_outcome(run, conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url(), ["job.created"])
    await start_daemon()
    r = await run("webhooks", "test", str(hook["id"]))
    assert r.code == 0, r.err
    assert "status:" in r.out and "success" in r.out and "204" in r.out
    [req] = await receiver.wait_for(1)
    body = Webhook(whsec(hook["secret"])).verify(req.body, dict(req.headers))
    assert body["event"] == "webhook.test" and body["test"] is True
    [row] = await hostdb.deliveries(conn, "event_type = 'webhook.test'")
    assert row["request_body"].encode() == req.body and row["status"] == "success"

    receiver.respond("/hook", Reply(500))
    r = await run("webhooks", "test", str(hook["id"]), "--json")
    assert r.code == 1
    assert r.json()["status"] == "retrying" and r.json()["response_status"] == 500


async def test_webhooks_test_refusals_and_no_daemon(run, conn):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, PUBLIC_URL, status="inactive")
    (await run("webhooks", "test", str(hook["id"]))).refused(2, "inactive", "enable it first")
    (await run("webhooks", "test", str(hook["id"]), "--timeout", "x")).refused(2, "--timeout")
    assert await hostdb.deliveries(conn) == []

    await conn.execute("UPDATE webhooks SET status = 'active' WHERE id = %s", (hook["id"],))
    r = await run("webhooks", "test", str(hook["id"]), "--timeout", "0.5")
    r.refused(1, "not attempted within 0.5 s", "dispatcher run")
    r = await run("webhooks", "test", str(hook["id"]), "--no-wait", "--json")
    assert r.code == 0 and r.json()["status"] == "pending"
    rows = await hostdb.deliveries(conn)
    assert [d["status"] for d in rows] == ["pending", "pending"]


# -- deliveries ----------------------------------------------------------------------------------


async def test_deliveries_show_history_headers_and_response(run, conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn, org, retry_strategy="fixed", base_delay_seconds=1, enable_jitter=False
    )
    hook = await hostdb.create_webhook(
        conn,
        org,
        receiver.url(),
        ["job.*"],
        name="Payroll",
        headers={"Authorization": "Bearer tok-123"},
    )
    receiver.respond(
        "/hook", Reply(503, body=b"busy"), Reply(200, body=b"thanks", headers={"X-Seen": "1"})
    )
    await start_daemon()
    await hostdb.publish(conn, "job.created", {}, org)
    [row] = await hostdb.wait_deliveries(conn, "status = 'success'", 1)

    r = await run("deliveries", "show", str(row["id"]))
    assert r.code == 0
    assert "Payroll" in r.out and "2 of 4" in r.out and "thanks" in r.out
    history = r.out.split("attempts:\n")[1].split("\n\n")[0].splitlines()
    assert history[0].split()[:3] == ["ATTEMPT", "AT", "OUTCOME"]
    assert "retryable" in history[1] and "503" in history[1]
    assert "delivered" in history[2] and "200" in history[2]
    assert re.search(r"webhook-signature: +v1,", r.out) and re.search(r"X-Seen: +1", r.out)
    assert "tok-123" not in r.out and hook["secret"] not in r.out
    r = await run("deliveries", "show", str(row["id"]), "--json")
    shown = r.json()
    assert [a["outcome"] for a in shown["attempts"]] == ["retryable", "delivered"]
    assert shown["request_headers"]["Authorization"] == "[redacted]"
    assert shown["response_body"] == "thanks" and shown["webhook_name"] == "Payroll"


async def test_deliveries_list_filters(run, conn):
    org = await hostdb.create_org(conn)
    other = await hostdb.create_org(conn, "Other")
    a = await hostdb.create_webhook(conn, org, PUBLIC_URL, name="A")
    b = await hostdb.create_webhook(conn, org, PUBLIC_URL, name="B")
    x = await hostdb.create_webhook(conn, other, PUBLIC_URL, name="X")
    old = await insert_delivery(conn, org, a, "success", age=timedelta(days=2))
    new_a = await insert_delivery(conn, org, a, "dlq", age=timedelta(hours=1))
    new_b = await insert_delivery(conn, org, b, "pending", age=timedelta(minutes=5))
    theirs = await insert_delivery(conn, other, x, "failed")

    async def ids(*args: str) -> list[str]:
        r = await run("deliveries", "list", *args, "--json")
        assert r.code == 0, r.err
        return [d["id"] for d in r.json()]

    assert await ids() == [str(theirs), str(new_b), str(new_a), str(old)]
    assert await ids("--org", str(org)) == [str(new_b), str(new_a), str(old)]
    assert await ids("--webhook", str(a["id"])) == [str(new_a), str(old)]
    assert await ids("--status", "dlq") == [str(new_a)]
    assert await ids("--since", "1d") == [str(theirs), str(new_b), str(new_a)]
    assert await ids("--until", "30m", "--org", str(org)) == [str(new_a), str(old)]
    assert await ids("--limit", "1") == [str(theirs)]
    r = await run("deliveries", "list", "--org", str(org))
    assert r.code == 0
    lines = r.out.strip().splitlines()
    assert lines[0].split() == [
        "ID",
        "CREATED",
        "WEBHOOK",
        "EVENT",
        "STATUS",
        "TRIES",
        "HTTP",
        "ERROR",
    ]
    assert "dlq" in lines[2] and "4/4" in lines[2] and " A " in lines[2]
    r = await run("deliveries", "list", "--status", "failed", "--org", str(org))
    assert r.code == 0 and r.out.strip() == "no deliveries match"


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["list", "--since", "yesterday"], 2, "--since"),
        (["list", "--until", "2025-02-30"], 2, "--until"),
        (["list", "--since", "1h", "--until", "2h"], 2, "window is empty"),
        (["list", "--status", "lost"], 2, "--status"),
        (["list", "--limit", "0"], 2, "--limit"),
        (["list", "--limit", "ten"], 2, "--limit"),
        (["list", "--org", str(uuid.UUID(int=5))], 1, "organization"),
        (["list", "--webhook", str(uuid.UUID(int=5))], 1, "webhook"),
        (["show", str(uuid.UUID(int=5))], 1, "does not exist"),
        (["show", "five"], 2, "not a UUID"),
        (["replay", str(uuid.UUID(int=5))], 1, "does not exist"),
    ],
)
async def test_deliveries_refuse_bad_input(run, args, code, words):
    (await run("deliveries", *args)).refused(code, *words.split("|"))


async def test_deliveries_replay(run, conn):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, PUBLIC_URL)
    done = await insert_delivery(conn, org, hook, "failed")
    r = await run("deliveries", "replay", str(done), "--json")
    assert r.code == 0
    [copy] = await hostdb.deliveries(conn, "id = %s", (uuid.UUID(r.json()["delivery_id"]),))
    assert copy["status"] == "pending" and copy["webhook_id"] == hook["id"]
    before = await snapshot(conn)
    (await run("deliveries", "replay", str(copy["id"]))).refused(2, "still pending")
    assert await snapshot(conn) == before


# -- dead-letter queue ------------------------------------------------------------------------


async def test_dlq_list_retry_clear(run, conn):
    org = await hostdb.create_org(conn)
    other = await hostdb.create_org(conn, "Other")
    a = await hostdb.create_webhook(conn, org, PUBLIC_URL, name="A")
    off = await hostdb.create_webhook(conn, org, PUBLIC_URL, name="Off", status="disabled")
    x = await hostdb.create_webhook(conn, other, PUBLIC_URL, name="X")
    old_a = await insert_delivery(conn, org, a, "dlq", age=timedelta(days=3))
    new_a = await insert_delivery(conn, org, a, "dlq", age=timedelta(hours=1))
    off_row = await insert_delivery(conn, org, off, "dlq", age=timedelta(hours=1))
    theirs = await insert_delivery(conn, other, x, "dlq", age=timedelta(hours=1))
    await insert_delivery(conn, org, a, "failed")

    async def status(i: uuid.UUID) -> str:
        return (await hostdb.deliveries(conn, "id = %s", (i,)))[0]["status"]

    r = await run("dlq", "list", "--json")
    assert {d["id"] for d in r.json()} == {str(old_a), str(new_a), str(off_row), str(theirs)}
    r = await run("dlq", "list", "--webhook", str(a["id"]))
    assert r.code == 0 and len(r.out.strip().splitlines()) == 3

    r = await run("dlq", "retry", "--since", "2d")
    assert r.code == 0
    assert "retried 2 DLQ item(s)" in r.out and "1 item(s) stay in the DLQ" in r.out
    assert [await status(i) for i in (old_a, new_a, off_row, theirs)] == [
        "dlq",
        "pending",
        "dlq",
        "pending",
    ]
    [row] = await hostdb.deliveries(conn, "id = %s", (new_a,))
    assert row["attempt_number"] == 1 and row["next_retry_at"] is None

    r = await run("dlq", "clear", "--webhook", str(off["id"]), "--json")
    assert r.code == 0 and r.json() == {"cleared": 1}
    r = await run("dlq", "retry", "--org", str(org), "--json")
    assert r.json() == {"retried": 1, "skipped_inactive": 0}
    await conn.execute("UPDATE webhook_deliveries SET status = 'dlq'")
    r = await run("dlq", "clear", "--all")
    assert r.code == 0 and "cleared 5 DLQ item(s)" in r.out
    assert await hostdb.deliveries(conn, "status = 'dlq'") == []


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["retry"], 2, "--all"),
        (["clear"], 2, "--all"),
        (["retry", "--all", "--org", str(uuid.UUID(int=9))], 2, "--all"),
        (["clear", "--since", "later"], 2, "--since"),
        (["retry", "--org", str(uuid.UUID(int=9))], 1, "does not exist"),
        (["clear", "--webhook", str(uuid.UUID(int=9))], 1, "does not exist"),
        (["list", "--limit", "-3"], 2, "--limit"),
    ],
)
async def test_dlq_refuses_bad_input_and_changes_nothing(run, conn, args, code, words):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, PUBLIC_URL)
    await insert_delivery(conn, org, hook, "dlq")
    before = await snapshot(conn)
    (await run("dlq", *args)).refused(code, words)
    assert await snapshot(conn) == before


async def test_dlq_webhook_filter_must_match_org(run, conn):
    org = await hostdb.create_org(conn)
    other = await hostdb.create_org(conn, "Other")
    hook = await hostdb.create_webhook(conn, other, PUBLIC_URL)
    await insert_delivery(conn, other, hook, "dlq")
    before = await snapshot(conn)
    r = await run("dlq", "retry", "--org", str(org), "--webhook", str(hook["id"]))
    r.refused(2, "does not belong to organization")
    assert await snapshot(conn) == before


# -- recover -----------------------------------------------------------------------------------


async def test_recover(run, conn):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, PUBLIC_URL, ["job.*"], status="disabled")
    for age_hours, event_type in ((1, "job.created"), (3, "job.updated"), (1, "cand.created")):
        row = await one(
            conn,
            "INSERT INTO events (event_type, event_category, org_id, created_at)"
            " VALUES (%s, 'x', %s, now() - %s) RETURNING id",
            (event_type, org, timedelta(hours=age_hours)),
        )
        await conn.execute("DELETE FROM dispatcher.outbox WHERE event_id = %s", (row["id"],))
    hook_id = str(hook["id"])
    before = await snapshot(conn)
    (await run("recover", "--webhook", hook_id, "--since", "2h")).refused(2, "enable it first")
    r = await run("recover", "--webhook", hook_id, "--since", "4h", "--dry-run")
    assert r.code == 0 and "would queue 2 delivery(ies)" in r.out
    assert await snapshot(conn) == before

    await conn.execute("UPDATE webhooks SET status = 'active' WHERE id = %s", (hook["id"],))
    r = await run("recover", "--webhook", hook_id, "--since", "2h", "--json")
    assert r.code == 0 and r.json() == {"queued": 1, "dlq_superseded": 0, "dry_run": False}
    r = await run("recover", "--webhook", hook_id, "--since", "1d", "--until", "now")
    assert r.code == 0 and "queued 1 delivery(ies)" in r.out
    rows = await hostdb.deliveries(conn)
    assert sorted(d["event_type"] for d in rows) == ["job.created", "job.updated"]


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--since", "2 hours"], 2, "--since"),
        (["--since", "2h", "--until", "3h"], 2, "window is empty"),
        (["--since", "2h", "--until", "never"], 2, "--until"),
    ],
)
async def test_recover_refuses_bad_input(run, conn, args, code, words):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, PUBLIC_URL)
    (await run("recover", "--webhook", str(hook["id"]), *args)).refused(code, words)
    r = await run("recover", "--webhook", str(uuid.UUID(int=4)), "--since", "1h")
    r.refused(1, "does not exist")
    assert await hostdb.deliveries(conn) == []


# -- retry-config ------------------------------------------------------------------------------


async def test_retry_config_show_and_set(run, conn):
    org = await hostdb.create_org(conn)
    r = await run("retry-config", "show", "--org", str(org))
    assert r.code == 0 and "max retries:" in r.out and "host's defaults apply" in r.out
    r = await run("retry-config", "show", "--org", str(org), "--json")
    assert r.json()["max_retries"] == 3 and r.json()["configured"] is False

    r = await run(
        "retry-config",
        "set",
        "--org",
        str(org),
        "--max-retries",
        "10",
        "--strategy",
        "linear",
        "--no-jitter",
        "--json",
    )
    assert r.code == 0
    r = await run(
        "retry-config",
        "set",
        "--org",
        str(org),
        "--base-delay",
        "60",
        "--max-delay",
        "3600",
        "--retention-days",
        "90",
        "--no-dlq",
    )
    assert r.code == 0 and "host's defaults" not in r.out
    row = await one(conn, "SELECT * FROM integration_retry_config WHERE org_id = %s", (org,))
    assert (
        row["max_retries"],
        row["retry_strategy"],
        row["base_delay_seconds"],
        row["max_delay_seconds"],
        row["enable_jitter"],
        row["enable_dlq"],
        row["dlq_retention_days"],
    ) == (10, "linear", 60, 3600, False, False, 90)
    r = await run("retry-config", "show", "--org", str(org), "--json")
    assert r.json()["configured"] is True and r.json()["retry_strategy"] == "linear"


@pytest.mark.parametrize(
    "args",
    [
        ["--max-retries", "0"],
        ["--max-retries", "11"],
        ["--base-delay", "61"],
        ["--base-delay", "0"],
        ["--max-delay", "3601"],
        ["--retention-days", "91"],
        ["--retention-days", "0"],
        ["--strategy", "random"],
        ["--max-retries", "three"],
        [],
    ],
)
async def test_retry_config_refuses_out_of_range(run, conn, args):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(conn, org, max_retries=5)
    before = await snapshot(conn)
    r = await run("retry-config", "set", "--org", str(org), *args)
    r.refused(2, args[0].lstrip("-").split("-")[0] if args else "nothing to set")
    assert await snapshot(conn) == before


async def test_retry_config_unknown_org(run):
    r = await run("retry-config", "set", "--org", str(uuid.UUID(int=6)), "--max-retries", "2")
    r.refused(1, "does not exist")
    (await run("retry-config", "show", "--org", "x")).refused(2, "not a UUID")


# -- stats -----------------------------------------------------------------------------------


async def test_stats(run, conn):
    org = await hostdb.create_org(conn)
    other = await hostdb.create_org(conn, "Other")
    a = await hostdb.create_webhook(conn, org, PUBLIC_URL)
    await hostdb.create_webhook(conn, org, PUBLIC_URL, status="disabled")
    x = await hostdb.create_webhook(conn, other, PUBLIC_URL)
    await insert_delivery(conn, org, a, "pending", age=timedelta(minutes=3))
    await insert_delivery(conn, org, a, "retrying", age=timedelta(minutes=1))
    await insert_delivery(conn, org, a, "dlq")
    await insert_delivery(conn, other, x, "dlq")
    await conn.execute(
        "INSERT INTO events (event_type, event_category, org_id) VALUES ('job.created', 'job', %s)",
        (org,),
    )

    r = await run("stats", "--org", str(org))
    assert r.code == 0
    assert "1 active, 0 inactive, 1 disabled" in r.out
    assert "1 pending, 1 retrying, 0 success, 0 failed, 1 dlq" in r.out
    assert "due now:    2 (oldest due 3m" in r.out
    assert "DLQ size:   1" in r.out and "outbox:     1 event(s)" in r.out
    r = await run("stats", "--json")
    s = r.json()
    assert s["org_id"] is None and s["deliveries_dlq"] == 2 and s["webhooks_active"] == 2
    (await run("stats", "--org", str(uuid.UUID(int=8)))).refused(1, "does not exist")


# -- environment failures ----------------------------------------------------------------------


async def test_unreachable_database_is_one_line_without_the_password(run, monkeypatch):
    port = reserved_port()
    monkeypatch.setenv(
        "DISPATCHER_DATABASE_URL", f"postgresql://ops:hunter2secret@127.0.0.1:{port}/app"
    )
    for argv in (["webhooks", "list"], ["stats"], ["dlq", "clear", "--all"]):
        r = await run(*argv)
        r.refused(4, "cannot connect to PostgreSQL")
        assert "hunter2secret" not in r.err


async def test_schema_behind_is_refused(run, monkeypatch, empty_db_dsn):
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", empty_db_dsn)
    (await run("webhooks", "list")).refused(5, "dispatcher migrate")


# -- real subprocesses ---------------------------------------------------------------------------


async def python_m_dispatcher(env: dict[str, str], *argv: str) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher",
        *argv,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def test_subprocess_test_ping_through_a_daemon_subprocess(
    db_dsn, conn, receiver, daemon_factory
):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url(), ["job.*"])
    env = daemon_env(db_dsn)
    daemon = daemon_factory(env)
    await daemon.wait_for_log("ready", timeout=20)

    r = await python_m_dispatcher(env, "webhooks", "test", str(hook["id"]), "--json")
    assert r.code == 0, r.err
    assert r.json()["status"] == "success" and r.json()["response_status"] == 204
    [req] = await receiver.wait_for(1)
    assert json.loads(req.body)["event"] == "webhook.test"

    r = await python_m_dispatcher(env, "dlq", "retry")
    r.refused(2, "--all")
    r = await python_m_dispatcher(env, "deliveries", "list", "--json")
    assert [d["event_type"] for d in r.json()] == ["webhook.test"]
