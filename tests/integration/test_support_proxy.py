"""Self-tests for the TCP proxy (tests/support/proxy.py) in front of the real cluster."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from support.pg import PgCluster
from support.proxy import TcpProxy


def _dsn(proxy: TcpProxy) -> str:
    return f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"


async def _connect(proxy: TcpProxy) -> psycopg.AsyncConnection[tuple[object, ...]]:
    return await psycopg.AsyncConnection.connect(_dsn(proxy), connect_timeout=3, autocommit=True)


async def _select_one(proxy: TcpProxy) -> object:
    async with await _connect(proxy) as conn:
        row = await (await conn.execute("SELECT 1")).fetchone()
    assert row is not None
    return row[0]


async def test_proxy_forwards_a_connection(pg_proxy: TcpProxy, pg_cluster: PgCluster) -> None:
    assert pg_proxy.port not in (0, pg_cluster.port)
    async with await _connect(pg_proxy) as conn:
        assert pg_proxy.connection_count == 1
        cur = await conn.execute("SELECT inet_server_port()")
        assert await cur.fetchone() == (pg_cluster.port,)


@pytest.mark.chaos
async def test_cut_resets_connections_and_keeps_accepting(pg_proxy: TcpProxy) -> None:
    conn = await _connect(pg_proxy)
    try:
        await pg_proxy.cut()
        assert pg_proxy.connection_count == 0
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT 1")
    finally:
        await conn.close()
    assert await _select_one(pg_proxy) == 1


@pytest.mark.chaos
async def test_blackhole_hangs_queries_and_heal_resets_them(pg_proxy: TcpProxy) -> None:
    conn = await _connect(pg_proxy)
    try:
        pg_proxy.blackhole(True)
        query = asyncio.ensure_future(conn.execute("SELECT 1"))
        done, _ = await asyncio.wait({query}, timeout=0.5)
        assert not done, "a blackholed query must hang, not fail"
        assert pg_proxy.connection_count == 1

        pg_proxy.blackhole(False)  # heal: the partitioned connection gets a RST
        with pytest.raises(psycopg.OperationalError):
            await asyncio.wait_for(query, timeout=5)
    finally:
        await conn.close()
    assert await _select_one(pg_proxy) == 1


@pytest.mark.chaos
async def test_blackhole_accepts_new_connections_but_never_forwards(pg_proxy: TcpProxy) -> None:
    pg_proxy.blackhole(True)
    with pytest.raises(psycopg.OperationalError, match="timeout"):
        await psycopg.AsyncConnection.connect(_dsn(pg_proxy), connect_timeout=1)
    pg_proxy.blackhole(False)
    assert await _select_one(pg_proxy) == 1


async def test_proxy_to_a_dead_port_refuses_quickly() -> None:
    async with TcpProxy("127.0.0.1", 1) as proxy:
        with pytest.raises(psycopg.OperationalError):
            await psycopg.AsyncConnection.connect(_dsn(proxy), connect_timeout=2)
        assert proxy.connection_count == 0
