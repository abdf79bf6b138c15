"""`dispatcher demo` end to end, its receiver's verification, and the embedded PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from dispatcher.demo.embedded import EmbeddedPostgres, Source, pgserver_available, system_bindir
from dispatcher.demo.receiver import verify_intime, verify_standard_webhooks
from dispatcher.errors import ExitCode

NO_DATABASE = {"DISPATCHER_DATABASE_URL": "", "DATABASE_URL": "", "CREDENTIALS_DIRECTORY": ""}


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def leftovers(root: str) -> list[str]:
    """What is still there of an embedded server whose directory was `root`."""
    left = processes_mentioning(root)
    if Path(root).exists():
        left.append(f"directory {root}")
    return left


def assert_story(out: str) -> None:
    """The demo showed every case and its receiver verified every request."""
    got = re.search(r"The receiver got (\d+) requests and verified (\d+) of (\d+)", out)
    assert got, out
    received, verified, total = map(int, got.groups())
    # shop x2, crm 500 then 200, analytics 503 x3 then the replay
    assert received == verified == total == 8, out
    assert "signatures BAD" not in out
    assert out.count("-> delivered") == 4, out  # shop x2, crm on its retry, the replay
    assert out.count("-> retry in") == 3, out
    assert out.count("-> dead-letter queue") == 1, out
    assert "customer.created -> no webhook subscribes" in out
    assert "dispatcher migrate" in out and "dispatcher run" in out  # how to go further
    assert "integrations_" not in out  # the integrations worker is off: webhooks only


async def test_demo_on_embedded_postgres_exits_0_and_leaves_nothing_running(daemon_factory):
    demo = daemon_factory(NO_DATABASE, args=("demo",))
    assert await demo.wait_exit(90) == ExitCode.OK, demo.tail(80)
    out = demo.text()
    assert "starting a throwaway PostgreSQL" in out
    assert_story(out)
    data_dir = re.search(r"data in (\S+?),", out)
    assert data_dir, out
    assert leftovers(data_dir.group(1)) == []


async def test_demo_uses_the_configured_database_and_removes_its_rows(db_dsn, daemon_factory):
    demo = daemon_factory({**NO_DATABASE, "DISPATCHER_DATABASE_URL": db_dsn}, args=("demo",))
    assert await demo.wait_exit(60) == ExitCode.OK, demo.tail(80)
    out = demo.text()
    assert "Using the database in DISPATCHER_DATABASE_URL" in out
    assert "throwaway" not in out
    assert_story(out)
    async with await psycopg.AsyncConnection.connect(db_dsn) as conn:
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM organizations WHERE name LIKE 'Demo Org%%'),"
            " (SELECT count(*) FROM webhooks), (SELECT count(*) FROM webhook_deliveries),"
            " (SELECT count(*) FROM events), (SELECT count(*) FROM dispatcher.attempts)"
        )
        assert await cur.fetchone() == (0, 0, 0, 0, 0)


async def test_demo_refuses_a_database_whose_schema_is_behind(empty_db_dsn, daemon_factory):
    env = {**NO_DATABASE, "DISPATCHER_DATABASE_URL": empty_db_dsn}
    demo = daemon_factory(env, args=("demo",))
    assert await demo.wait_exit(60) == ExitCode.SCHEMA_BEHIND
    assert "run `dispatcher migrate` first" in demo.text()


async def test_run_without_a_database_says_what_to_set(daemon_factory):
    daemon = daemon_factory(NO_DATABASE, args=("run",))
    assert await daemon.wait_exit(30) == ExitCode.CONFIG
    out = daemon.text()
    assert "set DISPATCHER_DATABASE_URL" in out
    assert "throwaway" not in out and "dispatcher-demo" not in out


# --------------------------------------------------------------------------- the receiver


def whsec(secret: str) -> str:
    """The host's 64-hex secrets sign with their UTF-8 bytes: the whsec_ form of those bytes."""
    return "whsec_" + base64.b64encode(secret.encode()).decode()


def signed_by_the_libraries(secret: str, body: bytes, at: datetime) -> dict[str, str]:
    """Headers as a sender would make them: Standard Webhooks by its official library, the
    X-InTime signature by the host's recipe."""
    msg_id = "msg_2b1ULkX1zQ3mHFE0vV6v0sHTmPa"
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(whsec(secret)).sign(msg_id, at, body.decode()),
        "X-InTime-Timestamp": stamp,
        "X-InTime-Signature": "sha256=" + mac.hexdigest(),
    }


def test_receiver_accepts_what_the_official_library_and_the_host_recipe_sign() -> None:
    secret = secrets.token_hex(32)
    body = b'{"id":"e1","type":"order.created","data":{"n":1}}'
    headers = signed_by_the_libraries(secret, body, datetime.now(UTC))
    assert verify_standard_webhooks(secret, headers, body) is None
    assert verify_standard_webhooks(whsec(secret), headers, body) is None  # whsec_ form
    assert verify_intime(secret, headers, body) is None


def test_receiver_accepts_any_of_several_signatures_during_rotation() -> None:
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    body = b"{}"
    at = datetime.now(UTC)
    headers = signed_by_the_libraries(new, body, at)
    old_sig = Webhook(whsec(old)).sign(headers["webhook-id"], at, body.decode())
    headers["webhook-signature"] = f"{headers['webhook-signature']} {old_sig}"
    assert verify_standard_webhooks(old, headers, body) is None
    assert verify_standard_webhooks(new, headers, body) is None


@pytest.mark.parametrize(
    "tamper",
    ["body", "secret", "webhook-id", "stale", "missing"],
)
def test_receiver_rejects_tampered_or_stale_requests(tamper: str) -> None:
    secret = secrets.token_hex(32)
    body = b'{"id":"e1"}'
    at = datetime.fromtimestamp(time.time() - 3600, UTC) if tamper == "stale" else None
    headers = signed_by_the_libraries(secret, body, at or datetime.now(UTC))
    if tamper == "body":
        body = b'{"id":"e2"}'
    elif tamper == "secret":
        secret = secrets.token_hex(32)
    elif tamper == "webhook-id":
        headers["webhook-id"] = "msg_other"
    elif tamper == "missing":
        headers = {}
    assert verify_standard_webhooks(secret, headers, body) is not None
    if tamper != "webhook-id":  # the host's scheme does not sign the id
        assert verify_intime(secret, headers, body) is not None


# --------------------------------------------------------------------------- embedded PostgreSQL


@pytest.mark.parametrize("source", ["system", "pgserver"])
def test_embedded_postgres_starts_and_is_gone_after_stop(source: Source) -> None:
    if source == "system" and system_bindir() is None:
        pytest.skip("no system PostgreSQL on this machine")
    if source == "pgserver" and not pgserver_available():
        pytest.skip("the pgserver wheel is not installed")
    pg = EmbeddedPostgres(source)
    with pg:
        root = pg.root
        assert root is not None and root.exists()
        with psycopg.connect(pg.dsn, connect_timeout=10) as conn:
            row = conn.execute("SELECT current_setting('listen_addresses')").fetchone()
        assert row == ("",), "the embedded server must not listen on TCP"
    assert leftovers(str(root)) == []
    assert root.name.startswith("dispatcher-demo-")
