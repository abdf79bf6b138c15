"""Session-wide real infrastructure: a throwaway PostgreSQL cluster, per-test databases cloned
from a migrated template, an HTTP receiver, a TCP proxy and daemon subprocesses.

Support classes live in ``tests/support`` and are imported as ``support.*``.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hostdb
import psycopg
import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).parent))

from support.daemon import DaemonProcess
from support.pg import PgCluster, clean_up_on_sigterm, find_bindir, server_major
from support.proxy import TcpProxy
from support.receiver import Receiver

ALLOWED_TARGET_NETWORKS = "127.0.0.0/8,::1/128"
TEMPLATE_DB = "dispatcher_template"
HOST_TEMPLATE_DB = "host_template"
HOST_SCHEMA_SQL = Path(__file__).parent / "integration" / "host_schema.sql"
HOST_OWNER = "host_owner"  # the host's non-superuser owner (Supabase's `postgres`)
CREATE_DB_RETRY_SECONDS = 10.0

DaemonFactory = Callable[..., DaemonProcess]

# The PostgreSQL version matrix (scripts/test): the whole suite runs on one version, these
# modules (core delivery, host compatibility, migrations) on every other one. Keep their total
# under ~3 minutes on 2 cores: CI runs them once per extra version (the versions in parallel).
PGMATRIX_MODULES = frozenset(
    {
        "tests/integration/test_delivery.py",
        "tests/integration/test_host_fit.py",
        "tests/integration/test_least_privilege.py",
        "tests/integration/test_migrations.py",
        "tests/integration/test_patterns_sql.py",
        "tests/integration/test_schema_sql.py",
        "tests/integration/test_support_pg.py",
    }
)


def pytest_report_header(config: pytest.Config) -> str:
    bindir = find_bindir()
    return f"postgresql: {server_major(bindir)} ({bindir})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        if item.path.relative_to(root).as_posix() in PGMATRIX_MODULES:
            item.add_marker(pytest.mark.pgmatrix)


@pytest.fixture(scope="session", autouse=True)
def _allow_loopback_targets() -> Iterator[None]:
    """The daemon's SSRF guard refuses loopback unless told otherwise."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISPATCHER_ALLOWED_TARGET_NETWORKS", ALLOWED_TARGET_NETWORKS)
        yield


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway cluster for the whole session (never the machine's own server)."""
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def template_dsn(pg_cluster: PgCluster) -> str:
    """``dispatcher_template``, migrated once. Connections to it are disallowed afterwards so
    nothing can mutate it or block ``CREATE DATABASE ... TEMPLATE``; use ``db_dsn``."""
    from dispatcher.migrations import apply_migrations

    pg_cluster.create_database(TEMPLATE_DB)
    dsn = pg_cluster.dsn(TEMPLATE_DB)
    with ThreadPoolExecutor(max_workers=1) as pool:  # own thread: never clash with a test loop
        pool.submit(lambda: asyncio.run(apply_migrations(dsn))).result()
    with pg_cluster.connect() as conn:
        conn.execute(f"ALTER DATABASE {TEMPLATE_DB} WITH ALLOW_CONNECTIONS false IS_TEMPLATE true")
    return dsn


@pytest.fixture
def db_dsn(pg_cluster: PgCluster, template_dsn: str) -> Iterator[str]:
    """A fresh migrated database per test, dropped (WITH FORCE) afterwards."""
    name = f"t_{uuid.uuid4().hex}"
    clean_up_on_sigterm()  # an in-process daemon's event loop may have reset SIGTERM
    _ensure_running(pg_cluster)
    _create_with_retry(pg_cluster, name, TEMPLATE_DB)
    try:
        yield pg_cluster.dsn(name)
    finally:
        _ensure_running(pg_cluster)
        pg_cluster.drop_database(name)


@pytest.fixture(scope="session")
def host_template_dsn(pg_cluster: PgCluster) -> str:
    """``host_template``: tests/integration/host_schema.sql (the host's real SQL, Supabase-like
    roles), then every migration applied as the host's owner ``host_owner``, not a superuser."""
    from dispatcher.migrations import apply_migrations

    pg_cluster.create_database(HOST_TEMPLATE_DB)
    with pg_cluster.connect(HOST_TEMPLATE_DB, autocommit=True) as conn:
        conn.execute(hostdb.host_schema_sql(conn))
    owner_dsn = pg_cluster.dsn(HOST_TEMPLATE_DB, user=HOST_OWNER)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: asyncio.run(apply_migrations(owner_dsn))).result()
    with pg_cluster.connect() as conn:
        conn.execute(
            f"ALTER DATABASE {HOST_TEMPLATE_DB} WITH ALLOW_CONNECTIONS false IS_TEMPLATE true"
        )
    return pg_cluster.dsn(HOST_TEMPLATE_DB)


@pytest.fixture
def host_db_dsn(pg_cluster: PgCluster, host_template_dsn: str) -> Iterator[str]:
    """A fresh database shaped like the real host (see host_template_dsn), migrated; the DSN
    connects as the cluster superuser (``hostdb.host_owner_dsn`` gives the host's owner)."""
    name = f"h_{uuid.uuid4().hex}"
    _ensure_running(pg_cluster)
    _create_with_retry(pg_cluster, name, HOST_TEMPLATE_DB)
    with pg_cluster.connect(autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} OWNER TO {HOST_OWNER}")
    try:
        yield pg_cluster.dsn(name)
    finally:
        _ensure_running(pg_cluster)
        pg_cluster.drop_database(name)


@pytest.fixture
def empty_db_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh database with no migrations applied (for migration tests)."""
    name = f"e_{uuid.uuid4().hex}"
    _ensure_running(pg_cluster)
    pg_cluster.create_database(name)
    try:
        yield pg_cluster.dsn(name)
    finally:
        _ensure_running(pg_cluster)
        pg_cluster.drop_database(name)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as started:
        yield started


@pytest_asyncio.fixture
async def pg_proxy(pg_cluster: PgCluster) -> AsyncIterator[TcpProxy]:
    """A TcpProxy in front of the cluster; build DSNs with ``proxy.port``."""
    async with TcpProxy("127.0.0.1", pg_cluster.port) as proxy:
        yield proxy


@pytest.fixture
def daemon_factory() -> Iterator[DaemonFactory]:
    """``daemon_factory(env, args=("run",))`` -> started DaemonProcess; all are killed after
    the test and their log tails printed (shown by pytest when the test fails)."""
    daemons: list[DaemonProcess] = []

    def spawn(
        env: Mapping[str, str] | None = None, args: Sequence[str] = ("run",)
    ) -> DaemonProcess:
        daemon = DaemonProcess(env, args)
        daemons.append(daemon)
        daemon.start()
        return daemon

    yield spawn
    for daemon in daemons:
        print(f"--- {daemon!r} log tail ---\n{daemon.tail(80)}")
        daemon.close()


def _ensure_running(cluster: PgCluster) -> None:
    """Chaos tests stop the shared cluster; make sure a failed one does not break the rest."""
    if not cluster.is_running():
        cluster.start()


def _create_with_retry(cluster: PgCluster, name: str, template: str) -> None:
    deadline = time.monotonic() + CREATE_DB_RETRY_SECONDS
    while True:
        try:
            cluster.create_database(name, template=template)
            return
        except psycopg.errors.ObjectInUse:  # "source database is being accessed by other users"
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
