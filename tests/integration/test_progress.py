"""Long operator commands show progress and resume after Ctrl-C without redoing work
(issue 14 item 4): `dlq retry`, `recover`, `keys rotate`."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import hostdb
import pytest
from support.integrations import KEYS_1, KEYS_2_1, create_integration, run_cli

from dispatcher import db
from dispatcher.admin import api as admin
from dispatcher.progress import Progress
from dispatcher.settings import load_settings

PUBLIC_URL = "https://93.184.216.34/hook"  # a public literal address: no DNS lookup


async def cli(dsn: str, *argv: str, **env: str) -> tuple[int, str, str]:
    """The real command in a subprocess: stderr is a pipe, not a terminal."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher",
        *argv,
        env={**os.environ, "DISPATCHER_DATABASE_URL": dsn, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def progress_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith('{"event":"progress"')]


async def seed_dlq(conn: hostdb.Conn, org: Any, hook: Any, n: int) -> None:
    await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body, status, attempt_number, max_attempts, delivered_at)"
        " SELECT %s, %s, 'job.created', '{}', %s, '{}', '{}', 'dlq', 4, 4, now()"
        " FROM generate_series(1, %s)",
        (org, hook, PUBLIC_URL, n),
    )


async def count(conn: hostdb.Conn, where: str) -> int:
    cur = await conn.execute(f"SELECT count(*) AS n FROM webhook_deliveries WHERE {where}")
    row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


class CtrlC(Progress):
    """A Progress whose n-th update (made once a batch has committed) is a Ctrl-C."""

    def __init__(self, *args: Any, after: int, **kwargs: Any) -> None:
        self.after = after
        self.output = io.StringIO()
        super().__init__(*args, stream=self.output, tty=False, **kwargs)

    def add(self, n: int) -> None:
        super().add(n)
        self.after -= 1
        if self.after == 0:
            raise KeyboardInterrupt


async def test_dlq_retry_shows_progress_lines_when_not_on_a_terminal(db_dsn, conn):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, PUBLIC_URL)
    await seed_dlq(conn, org, hook["id"], 35)

    code, out, err = await cli(db_dsn, "dlq", "retry", "--all", "--batch", "10")
    assert code == 0, err
    assert "retried 35 DLQ item(s)" in out
    lines = progress_lines(err)
    assert len(lines) >= 2, err
    first, last = lines[0], lines[-1]
    assert first["operation"] == last["operation"] == "dlq_retry"
    assert (first["state"], first["done"], first["total"]) == ("running", 0, 35)
    assert (last["state"], last["done"], last["total"], last["percent"]) == (
        "finished",
        35,
        35,
        100.0,
    )
    assert last["rate"] is None or last["rate"] > 0
    assert {"eta_seconds", "elapsed_seconds", "timestamp", "unit"} <= set(last)
    assert await count(conn, "status = 'pending'") == 35

    # One batch is not a long operation: no progress lines.
    await seed_dlq(conn, org, hook["id"], 3)
    code, out, err = await cli(db_dsn, "dlq", "retry", "--all", "--batch", "10")
    assert code == 0 and "retried 3" in out and progress_lines(err) == []


async def test_dlq_retry_resumes_after_ctrl_c_without_redoing_work(db_dsn, conn):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, PUBLIC_URL)
    await seed_dlq(conn, org, hook["id"], 25)
    settings = load_settings(database_url=db_dsn)
    meters: list[CtrlC] = []

    def interrupting(total: int | None) -> Progress:
        meters.append(CtrlC("dlq_retry", total, after=2))
        return meters[-1]

    async with await db.connect(settings) as c:
        with pytest.raises(KeyboardInterrupt):
            await admin.dlq_retry(
                c, admin.Window(), everything=True, batch=10, progress=interrupting
            )
    # Two batches were committed before Ctrl-C; the display says it was interrupted.
    assert await count(conn, "status = 'pending'") == 20
    assert await count(conn, "status = 'dlq'") == 5
    last = json.loads(meters[0].output.getvalue().splitlines()[-1])
    assert (last["state"], last["done"], last["total"]) == ("interrupted", 20, 25)

    # Running it again handles only what is left.
    code, out, err = await cli(db_dsn, "dlq", "retry", "--all", "--batch", "2")
    assert code == 0, err
    assert "retried 5 DLQ item(s)" in out
    assert progress_lines(err)[0]["total"] == 5
    assert await count(conn, "status = 'pending'") == 25


async def test_recover_in_slices_resumes_after_ctrl_c_without_queueing_twice(db_dsn, conn):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, PUBLIC_URL, ["job.*"])
    # 60 events an hour old or less, never fanned out (no outbox row, no delivery)
    await conn.execute(
        "INSERT INTO events (event_type, event_category, org_id, created_at)"
        " SELECT 'job.created', 'job', %s, now() - make_interval(mins => g)"
        " FROM generate_series(1, 60) g",
        (org,),
    )
    await conn.execute("DELETE FROM dispatcher.outbox")
    since = datetime.now(UTC) - timedelta(hours=2)
    settings = load_settings(database_url=db_dsn)
    meters: list[CtrlC] = []

    def interrupting(total: int | None) -> Progress:
        meters.append(CtrlC("recover", total, after=1))
        return meters[-1]

    async with await db.connect(settings) as c:
        with pytest.raises(KeyboardInterrupt):
            await admin.recover(c, hook["id"], since, batch=20, progress=interrupting)
    assert meters[0].total == 60
    queued = await count(conn, "status = 'pending'")
    assert 0 < queued < 60 and meters[0].done == queued

    code, out, err = await cli(
        db_dsn, "recover", "--webhook", str(hook["id"]), "--since", "3h", "--batch", "10"
    )
    assert code == 0, err
    assert f"queued {60 - queued} delivery(ies)" in out
    lines = progress_lines(err)
    assert lines[0]["total"] == 60 - queued and lines[-1]["state"] == "finished"
    assert lines[-1]["done"] == 60 - queued
    # every event exactly once
    cur = await conn.execute(
        "SELECT count(*) AS n, count(DISTINCT event_id) AS events FROM webhook_deliveries"
    )
    assert dict(await cur.fetchone()) == {"n": 60, "events": 60}


async def test_key_rotation_shows_progress_and_a_second_run_rewrites_nothing(db_dsn, conn):
    org = await hostdb.create_org(conn)
    for i in range(5):
        await create_integration(
            conn, org, name=f"Cal {i}", config={"client_id": "c", "client_secret": f"s-{i}-xyz"}
        )
    code, out, err = await run_cli(db_dsn, "secrets", "encrypt", "--batch", "2", keys=KEYS_1)
    assert code == 0, err
    lines = progress_lines(err)
    assert lines[0]["operation"] == "secrets_encrypt" and lines[0]["total"] == 5
    assert (lines[-1]["state"], lines[-1]["done"]) == ("finished", 5)

    code, out, err = await run_cli(db_dsn, "keys", "rotate", "--batch", "2", keys=KEYS_2_1)
    assert code == 0, err
    assert "re-encrypted 5 value(s) in 5 row(s) under key 'k2'" in out
    lines = progress_lines(err)
    assert lines[0]["operation"] == "keys_rotate"
    assert (lines[-1]["state"], lines[-1]["done"], lines[-1]["total"]) == ("finished", 5, 5)
    code, out, err = await run_cli(db_dsn, "keys", "rotate", "--batch", "2", keys=KEYS_2_1)
    assert code == 0 and "re-encrypted 0 value(s) in 0 row(s)" in out


async def test_dlq_retry_draws_a_bar_on_a_terminal(db_dsn, conn):
    import pty

    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, PUBLIC_URL)
    await seed_dlq(conn, org, hook["id"], 35)
    master, slave = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dispatcher",
            "dlq",
            "retry",
            "--all",
            "--batch",
            "10",
            env={**os.environ, "DISPATCHER_DATABASE_URL": db_dsn},
            stdout=asyncio.subprocess.PIPE,
            stderr=slave,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert proc.returncode == 0 and b"retried 35" in out
    screen = b"".join(chunks).decode()
    assert '{"event"' not in screen  # a bar, not JSON lines
    final = [line for line in screen.split("\r") if line.strip()][-1]  # the pty adds \r\n
    assert final.startswith("dlq retry  [########################]  35/35  100%")
    assert "/s" in final and "finished in" in final
