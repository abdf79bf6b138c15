"""One bad endpoint never slows the others."""

from __future__ import annotations

import asyncio
import itertools
import time

import hostdb
from support.receiver import Hang, Reply


async def healthy_drain_seconds(conn, receiver, org, count: int, tag: str) -> float:
    before = len(receiver.requests_for("/good"))
    started = time.monotonic()
    await hostdb.insert_events_directly(conn, org, f"good.{tag}", count)
    await receiver.wait_for(before + count, path="/good", timeout=60)
    return time.monotonic() - started


async def test_a_hanging_endpoint_does_not_slow_healthy_ones(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url("/good"), ["good.*"])
    await hostdb.create_webhook(conn, org, receiver.url("/hang"), ["slow.*"])
    receiver.respond("/good", Reply(204, delay=0.01))
    receiver.respond("/hang", Hang())
    running = await start_daemon(concurrency=16, per_webhook_concurrency=4, http_timeout=60)

    alone = await healthy_drain_seconds(conn, receiver, org, 300, "alone")
    # A backlog for the hanging endpoint, older than the healthy work that follows.
    await hostdb.insert_events_directly(conn, org, "slow.created", 200)
    await receiver.wait_for(4, path="/hang", timeout=10)
    beside = await healthy_drain_seconds(conn, receiver, org, 300, "beside")

    hung = len(receiver.requests_for("/hang"))
    assert hung == 4, f"the per-webhook cap holds the hanging endpoint at 4 attempts, saw {hung}"
    assert running.app.dispatcher is not None
    ratio = alone / beside
    print(
        f"healthy drain alone {alone:.2f}s, beside a hanging endpoint {beside:.2f}s, "
        f"ratio {ratio:.2f}"
    )
    # Isolation, not speed: with 12 of 16 slots free the healthy flow keeps its pace.
    assert ratio > 0.5, f"healthy deliveries slowed {1 / ratio:.1f}x by a hanging endpoint"


async def test_a_failing_endpoint_is_probed_not_hammered(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn, org, base_delay_seconds=1, max_delay_seconds=1, max_retries=1
    )
    hook = await hostdb.create_webhook(conn, org, receiver.url("/down"), ["*"])
    receiver.respond("/down", Reply(503))
    await start_daemon(concurrency=16, per_webhook_concurrency=4)
    await hostdb.insert_events_directly(conn, org, "job.created", 40)
    # Ten steps of failure disable it (the host's rule); until then it is probed.
    await receiver.wait_for(10, path="/down", timeout=40)
    arrivals = sorted(r.received_at for r in receiver.requests_for("/down"))
    # The first wave (up to the per-webhook cap) goes before any failure is known;
    # after that, one probe at a time, one per backoff step (1 s, jittered: 0.8-1.2 s), not
    # 40 at once. (The shortest step the host's retry config allows keeps the nine probes short.)
    burst = [t for t in arrivals if t < arrivals[0] + 0.5]
    assert len(burst) <= 4
    later = arrivals[len(burst) :]
    gaps = [b - a for a, b in itertools.pairwise(later)]
    assert gaps and min(gaps) > 0.6, f"probes came {gaps} apart"
    await hostdb.wait_deliveries(conn, "error_message = 'Webhook is not active'", 1, timeout=20)
    assert (await hostdb.webhook(conn, hook["id"]))["status"] == "disabled"
    # The first wave overlapped in time: one step of the streak; then nine probes.
    assert len(receiver.requests_for("/down")) == len(burst) + 9


async def test_rate_limit_is_shared_by_replicas(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url("/limited"), ["*"])
    await conn.execute("SELECT dispatcher.set_webhook_rate_limit(%s, %s, 4)", (org, hook["id"]))
    first = await start_daemon()
    second = await start_daemon()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (
        first.app.coordinator.replicas == second.app.coordinator.replicas == 2
        and first.app.coordinator.limits.limited()
        and second.app.coordinator.limits.limited()
    ):
        await asyncio.sleep(0.1)
    assert first.app.coordinator.replicas == 2, "replicas see each other through heartbeats"

    await hostdb.insert_events_directly(conn, org, "job.created", 24)
    requests = await receiver.wait_for(24, path="/limited", timeout=30)
    arrivals = sorted(r.received_at for r in requests)
    # 4/s shared by two replicas (2/s each, burst 2 each): 24 requests need about 5 s.
    # Unshared (4/s each) they would take about 2.5 s. A noisy machine only slows it.
    assert arrivals[-1] - arrivals[0] > 3.5, arrivals[-1] - arrivals[0]
    busiest = max(sum(1 for t in arrivals if s <= t < s + 1.0) for s in arrivals)
    assert busiest <= 8, f"{busiest} requests in one second against a limit of 4/s"


async def test_rate_limit_refuses_other_orgs_and_bad_values(conn):
    import psycopg

    org = await hostdb.create_org(conn)
    other = await hostdb.create_org(conn, "Other")
    hook = await hostdb.create_webhook(conn, org, "http://127.0.0.1:9/x", ["*"])
    for args, message in [
        ((other, hook["id"], 5), "not found"),
        ((org, hook["id"], -1), "between"),
    ]:
        try:
            await conn.execute("SELECT dispatcher.set_webhook_rate_limit(%s, %s, %s)", args)
        except psycopg.Error as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"{args} was accepted")


async def test_a_retry_comes_due_while_a_backlog_of_new_events_drains(conn, receiver, start_daemon):
    """Fan-out passes that keep filling the batch do not starve due retries."""
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn, org, retry_strategy="fixed", base_delay_seconds=1, enable_jitter=False
    )
    await hostdb.create_webhook(conn, org, receiver.url("/flaky"), ["flaky.*"])
    await hostdb.create_webhook(conn, org, receiver.url("/bulk"), ["bulk.*"])
    receiver.respond("/flaky", Reply(503), Reply(204))
    receiver.respond("/bulk", *[Reply(204, delay=0.01)] * 10_000)
    await start_daemon(concurrency=32, per_webhook_concurrency=32, batch_size=32)

    await hostdb.publish(conn, "flaky.created", {}, org)
    await receiver.wait_for(1, path="/flaky", timeout=10)
    # A backlog of new events that keeps every fan-out pass full for seconds (>= 3 s:
    # 10,000 answers of 10 ms, 32 at a time).
    await hostdb.insert_events_directly(conn, org, "bulk.created", 10_000)
    await receiver.wait_for(2, path="/flaky", timeout=30)
    first, retry = (r.received_at for r in receiver.requests_for("/flaky")[:2])
    bulk_before_retry = sum(1 for r in receiver.requests_for("/bulk") if r.received_at < retry)
    assert bulk_before_retry < 10_000, "the backlog drained before the retry: nothing shown"
    assert retry - first < 3.0, f"the retry came {retry - first:.1f} s after the failure"
