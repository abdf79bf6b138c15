"""A webhook URL's query token never reaches the daemon's log (branch breakit). The daemon
never logs a webhook's URL (tracing keeps the host alone): many endpoints carry their
credential in it (`?token=...`). A receiver that redirects, as an HTTP-to-HTTPS redirect
does, echoes that URL in its `Location`, which the attempt's error quotes; the per-attempt
log line (`delivery_attempt`, written by `hot_info`) carries the error.

The delivery row keeps the error as it was (the row holds the URL itself in request_url):
only the log is checked."""

from __future__ import annotations

import secrets
import signal

import hostdb
from support.daemon import daemon_env
from support.receiver import Reply


async def test_a_redirect_echoing_the_webhook_url_puts_no_query_token_in_the_log(
    conn, receiver, db_dsn, daemon_factory
):
    token = "tok-" + secrets.token_urlsafe(24)
    org = await hostdb.create_org(conn)
    url = receiver.url("/redirecting") + f"?token={token}"
    hook = await hostdb.create_webhook(conn, org, url, ["*"])
    secure = url.replace("http://", "https://", 1)
    receiver.respond("/redirecting", Reply(301, headers={"Location": secure}))
    daemon = daemon_factory(daemon_env(db_dsn, DISPATCHER_LOG_LEVEL="info"))
    await daemon.wait_for_log("ready", timeout=20)
    await hostdb.publish(conn, "job.created", {"n": 1}, org)
    [row] = await hostdb.wait_deliveries(
        conn, "webhook_id = %s AND status = 'failed'", 1, (hook["id"],), timeout=30
    )
    assert "redirect" in row["error_message"]  # premise: the redirect was seen
    await daemon.wait_for_log("delivery_attempt", timeout=20)
    daemon.send_signal(signal.SIGTERM)
    assert await daemon.wait_exit(30) == 0
    log = daemon.text()
    assert '"event":"delivery_attempt"' in log, "premise: the attempt's line was written"
    assert token not in log, "the webhook URL's query token is in the daemon's log"
