"""The SSRF guard end to end: every spelling of an internal address is refused by the
daemon before a single byte is sent (unit coverage: tests/unit/test_ssrf.py).

The target is a real dual-stack listener on the loopback interface that counts every
connection and byte: a naive client reaches it through each of these spellings (checked
first, as the premise), the daemon must not.
"""

from __future__ import annotations

import asyncio
import functools
import socket

import hostdb
import pytest
from support import hostile
from support.hostile import RawServer, ScriptedResolver
from support.receiver import Receiver

import dispatcher.app
from dispatcher.sender import Sender, Target
from dispatcher.settings import load_settings
from dispatcher.ssrf import GuardedResolver

# host spelling in the URL, what the refusal says, whether a naive connect() reaches
# a dual-stack listener on this machine through it
FORMS = [
    ("[::ffff:127.0.0.1]", "IPv4-mapped", True),
    ("[::ffff:7f00:1]", "IPv4-mapped", True),
    ("[::127.0.0.1]", "IPv4-compatible", False),
    ("[64:ff9b::7f00:1]", "NAT64", False),
    ("[64:ff9b::a00:1]", "NAT64", False),
    ("[2002:7f00:1::]", "6to4", False),
    ("[2002:c0a8:101::1]", "6to4", False),
    ("2130706433", "127.0.0.1 is a loopback address", True),
    ("0177.0.0.1", "127.0.0.1 is a loopback address", True),
    ("0x7f000001", "127.0.0.1 is a loopback address", True),
    ("0x7f.1", "127.0.0.1 is a loopback address", True),
    ("127.1", "127.0.0.1 is a loopback address", True),
    ("0.0.0.0", "unspecified address", True),
    ("[::]", "unspecified address", True),
    ("[::1]", "loopback", True),
    ("127.0.0.1", "loopback", True),
    ("100.64.0.1", "carrier-grade NAT", False),
    ("[fd00::1]", "unique-local", False),
    ("[fe80::1]", "link-local", False),
]


def _naive_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=1):
            return True
    except OSError:
        return False


async def test_internal_address_spellings_are_refused_before_any_byte(conn, start_daemon):
    async with RawServer(hostile.record_only(), host="::") as target:
        reachable = [host for host, _, naive in FORMS if naive]
        for host in reachable:
            assert _naive_connect(host, target.port), f"premise: {host} reaches the target"
        async with asyncio.timeout(5):
            while target.connections < len(reachable):
                await asyncio.sleep(0.01)
        naive_connections = target.connections

        org = await hostdb.create_org(conn)
        hooks = {}
        for host, _, _ in FORMS:
            hook = await hostdb.create_webhook(
                conn, org, f"http://{host}:{target.port}/hook", ["*"], name=host[:100]
            )
            hooks[hook["id"]] = host
        # Nothing is allowed: the guard's defaults, as in production.
        running = await start_daemon(allowed_target_networks="", http_timeout=2.0)
        await hostdb.publish(conn, "job.created", {}, org)
        rows = await hostdb.wait_deliveries(conn, "status = 'failed'", len(FORMS))

        by_host = {hooks[r["webhook_id"]]: r for r in rows}
        for host, reason, _ in FORMS:
            row = by_host[host]
            assert row["error_code"] in ("target_refused", "invalid_url"), (host, row)
            assert reason in row["error_message"], (host, row["error_message"])
            assert row["response_status"] in (None, 0)
        assert target.connections == naive_connections, "the daemon connected to the target"
        assert target.bytes_received == 0
        assert not running.task.done()


@pytest.mark.parametrize("host", ["2130706433", "0177.0.0.1", "0x7f000001", "0x7f.1", "127.1"])
async def test_odd_spellings_of_an_allowed_address_are_still_refused(conn, start_daemon, host):
    """With 127.0.0.0/8 allowed, 127.0.0.1 is delivered to, its other spellings are not."""
    async with RawServer(hostile.reply_raw(b"HTTP/1.1 204 No\r\n\r\n")) as target:
        org = await hostdb.create_org(conn)
        odd = await hostdb.create_webhook(conn, org, f"http://{host}:{target.port}/h", ["*"])
        plain = await hostdb.create_webhook(conn, org, target.url("/h"), ["*"])
        await start_daemon(allowed_target_networks="127.0.0.0/8")
        await hostdb.publish(conn, "job.created", {}, org)
        [row] = await hostdb.wait_deliveries(
            conn, "webhook_id = %s AND status = 'failed'", 1, (odd["id"],)
        )
        assert row["error_code"] == "invalid_url"
        assert "non-canonical spelling of the IPv4 address 127.0.0.1" in row["error_message"]
        await hostdb.wait_deliveries(
            conn, "webhook_id = %s AND status = 'success'", 1, (plain["id"],)
        )
        assert target.requests == 1


async def test_a_name_with_one_private_address_among_several_is_refused(
    conn, start_daemon, monkeypatch
):
    """Through the daemon, with a scripted DNS: public-looking + private answer -> refused."""
    async with RawServer(hostile.record_only()) as target, Receiver() as ok:
        dns = ScriptedResolver(
            {
                "mixed.test": [["127.0.0.1", "10.0.0.7"]],
                "mixed6.test": [["127.0.0.1", "::ffff:192.168.1.1"]],
                "fine.test": [["127.0.0.1"]],
            }
        )
        monkeypatch.setattr(dispatcher.app, "Sender", functools.partial(Sender, resolver=dns))
        org = await hostdb.create_org(conn)
        for name in ("mixed.test", "mixed6.test"):
            await hostdb.create_webhook(conn, org, f"http://{name}:{target.port}/h", ["*"])
        good = await hostdb.create_webhook(conn, org, f"http://fine.test:{ok.port}/h", ["*"])
        # 127.0.0.1 stands for a public address here: it is the only network allowed.
        await start_daemon(allowed_target_networks="127.0.0.1/32")
        await hostdb.publish(conn, "job.created", {}, org)

        rows = await hostdb.wait_deliveries(conn, "status = 'failed'", 2)
        messages = sorted(r["error_message"] for r in rows)
        assert "refused target 'mixed.test' (resolves to 127.0.0.1, 10.0.0.7)" in messages[0]
        assert "10.0.0.7 is a private address" in messages[0]
        assert "IPv4-mapped for 192.168.1.1 is a private address" in messages[1]
        assert all(r["error_code"] == "target_refused" for r in rows)
        assert target.connections == 0
        await hostdb.wait_deliveries(
            conn, "webhook_id = %s AND status = 'success'", 1, (good["id"],)
        )
        assert len(ok.requests) == 1


async def test_an_answer_that_changes_between_check_and_connect_is_never_used(tmp_path):
    """DNS rebinding at the Sender: one lookup per connection, and the connection goes to
    exactly the addresses that lookup returned and the guard checked; a changed answer is
    checked again before it is used."""
    async with Receiver() as public, RawServer(hostile.record_only(), host="127.0.0.2") as inner:
        dns = ScriptedResolver(
            {
                # public first (the check passes), then the attacker's internal address
                "rebind.test": [["127.0.0.1"], ["127.0.0.2"]],
                # internal first: refused, even though the next answer would be fine
                "late.test": [["127.0.0.2"], ["127.0.0.1"]],
            }
        )
        settings = load_settings(
            database_url="postgresql://unused@127.0.0.1/none",
            allowed_target_networks="127.0.0.1/32",
            http_timeout=2.0,
        )

        async def send_guarded(name: str, port: int):
            # A fresh Sender per attempt: no connection or DNS cache carries over.
            guard = GuardedResolver(settings.allowed_networks, inner=dns)
            sender = Sender(settings, resolver=guard)
            await sender.start()
            try:
                return await sender.attempt(
                    Target("d-1", "job.created", f"http://{name}:{port}/hook", "{}", ("k",))
                )
            finally:
                await sender.close()

        first = await send_guarded("rebind.test", public.port)
        assert first.outcome.value == "delivered", first
        assert dns.calls == ["rebind.test"], "one lookup, used for the connection"
        assert len(public.requests) == 1

        second = await send_guarded("rebind.test", inner.port)
        assert second.outcome.value == "refused", second
        assert "127.0.0.2 is a loopback address" in second.error_message
        assert dns.calls == ["rebind.test", "rebind.test"]

        third = await send_guarded("late.test", inner.port)
        assert third.outcome.value == "refused", third
        assert dns.calls.count("late.test") == 1

        assert inner.connections == 0 and inner.bytes_received == 0


@pytest.mark.parametrize("answer", [["127.0.0.2"], ["::1"], ["169.254.169.254"]])
async def test_daemon_refuses_a_name_resolving_inside(conn, start_daemon, monkeypatch, answer):
    async with RawServer(hostile.record_only(), host="::") as target:
        dns = ScriptedResolver({"inside.test": [answer]})
        monkeypatch.setattr(dispatcher.app, "Sender", functools.partial(Sender, resolver=dns))
        org = await hostdb.create_org(conn)
        await hostdb.create_webhook(conn, org, f"http://inside.test:{target.port}/h", ["*"])
        await start_daemon(allowed_target_networks="")
        await hostdb.publish(conn, "job.created", {}, org)
        [row] = await hostdb.wait_deliveries(conn, "status = 'failed'", 1)
        assert f"refused target 'inside.test' (resolves to {answer[0]})" in row["error_message"]
        assert "DISPATCHER_ALLOWED_TARGET_NETWORKS" in row["error_message"]
        assert target.connections == 0
