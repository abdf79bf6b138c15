"""systemd: the unit file verifies, and a real daemon speaks the notify protocol.

The notify tests bind an AF_UNIX datagram socket, point NOTIFY_SOCKET at it and
run `python -m dispatcher run` as a subprocess, exactly as systemd would.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from support.daemon import daemon_env

from dispatcher.errors import ConfigError, ExitCode
from dispatcher.settings import DATABASE_URL_CREDENTIAL, load_settings

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "webhook-dispatcher.service"
INSTALLED_EXEC = "/opt/webhook-dispatcher/bin/dispatcher"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine"
)


# --------------------------------------------------------------------------- the unit file


def _unit_directives() -> dict[str, list[str]]:
    """`Section.Key` -> every value, in order (keys such as LoadCredential repeat)."""
    seen: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        seen.setdefault(f"{section}.{key}", []).append(value)
    return seen


def _runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's `dispatcher` (verify checks it)."""
    exe = shutil.which("dispatcher") or str(Path(sys.executable).with_name("dispatcher"))
    text = UNIT.read_text().replace(f"ExecStart={INSTALLED_EXEC}", f"ExecStart={exe}")
    assert exe in text, "ExecStart no longer names the documented install path"
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


def test_unit_has_the_required_directives() -> None:
    d = _unit_directives()
    service = {k.removeprefix("Service."): v for k, v in d.items() if k.startswith("Service.")}
    assert service["Type"] == ["notify"]
    assert service["ExecStart"] == [f"{INSTALLED_EXEC} run"]
    assert service["Restart"] == ["on-failure"]
    assert service["WatchdogSec"][0].rstrip("s").isdigit()
    assert service["DynamicUser"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    for flag in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "RestrictNamespaces"):
        assert service[flag] == ["yes"], flag
    assert service["CapabilityBoundingSet"] == [""]
    assert service["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert "@system-service" in service["SystemCallFilter"]
    assert service["EnvironmentFile"] == ["/etc/webhook-dispatcher/dispatcher.env"]
    assert any(c.startswith(f"{DATABASE_URL_CREDENTIAL}:") for c in service["LoadCredential"])
    # Exit codes that a restart cannot fix must match dispatcher/errors.py.
    no_restart = {int(c) for c in service["RestartPreventExitStatus"][0].split()}
    assert no_restart == {
        ExitCode.USAGE,
        ExitCode.CONFIG,
        ExitCode.SCHEMA_BEHIND,
        ExitCode.PERMISSION,
    }


@needs_systemd_analyze
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    unit = _runnable_copy(tmp_path)
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    about_ours = [line for line in (done.stdout + done.stderr).splitlines() if unit.name in line]
    assert done.returncode == 0, done.stdout + done.stderr
    assert about_ours == [], "systemd-analyze warned about the unit:\n" + "\n".join(about_ours)


@needs_systemd_analyze
def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    helptext = subprocess.run(
        [SYSTEMD_ANALYZE, "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    if "--offline" not in helptext:
        pytest.skip("this systemd-analyze cannot review a unit file offline (systemd < 250)")
    unit = _runnable_copy(tmp_path)
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    verdict = [line for line in done.stdout.splitlines() if "Overall exposure" in line]
    assert done.returncode == 0, f"exposure above 2.0: {verdict}"


# --------------------------------------------------------------------------- credentials


def test_database_url_credential_is_read_when_env_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / DATABASE_URL_CREDENTIAL).write_text("postgresql://u:pw@db.internal/app\n")
    monkeypatch.delenv("DISPATCHER_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    settings = load_settings()
    assert settings.dsn() == "postgresql://u:pw@db.internal/app"
    assert "pw" not in str(settings.summary())


def test_database_url_from_env_wins_over_the_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / DATABASE_URL_CREDENTIAL).write_text("postgresql://from-credential/app")
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", "postgresql://from-env/app")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert load_settings().dsn() == "postgresql://from-env/app"


def test_no_database_url_anywhere_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISPATCHER_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))  # empty directory
    with pytest.raises(ConfigError, match="set DISPATCHER_DATABASE_URL"):
        load_settings().dsn()


# --------------------------------------------------------------------------- sd_notify


@dataclass
class NotifySocket:
    path: str
    sock: socket.socket
    messages: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    async def collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._add(await loop.sock_recv(self.sock, 65536))

    def drain(self) -> None:
        """Read whatever is already queued (the sender has exited: nothing more comes)."""
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            self._add(data)

    def _add(self, data: bytes) -> None:
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append((time.time(), fields))

    def having(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in self.messages if key in m]

    async def wait_for(self, key: str, count: int = 1, timeout: float = 20.0) -> float:
        """Arrival time of the `count`-th message carrying `key`."""
        deadline = time.monotonic() + timeout
        while len(self.having(key)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count}x {key} within {timeout}s: {self.messages}")
            await asyncio.sleep(0.02)
        return self.having(key)[count - 1][0]


@pytest.fixture
def notify_path() -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix="sdn-")  # short: AF_UNIX paths are limited to 108 bytes
    try:
        yield f"{folder}/notify"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest_asyncio.fixture
async def notify_socket(notify_path: str) -> AsyncIterator[NotifySocket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.setblocking(False)
    ns = NotifySocket(notify_path, sock)
    task = asyncio.create_task(ns.collect())
    try:
        yield ns
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sock.close()


def _daemon_env(notify: NotifySocket, **more: str) -> dict[str, str]:
    # WATCHDOG_USEC: ping every 0.5 s while the loops progress
    return daemon_env(None, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="1000000", **more)


async def test_ready_after_listen_then_watchdog_then_stopping(
    db_dsn: str, daemon_factory, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    # The DSN comes the systemd way: a LoadCredential file, not the environment.
    (tmp_path / DATABASE_URL_CREDENTIAL).write_text(db_dsn + "\n")
    env = _daemon_env(
        notify_socket,
        CREDENTIALS_DIRECTORY=str(tmp_path),
        DISPATCHER_DATABASE_URL="",
        DATABASE_URL="",
    )
    daemon = daemon_factory(env)

    ready_at = await notify_socket.wait_for("READY", timeout=30)
    ready = notify_socket.having("READY")[0][1]
    assert ready["READY"] == "1"
    assert ready["MAINPID"] == str(daemon.pid)
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT extract(epoch FROM query_start) FROM pg_stat_activity "
            "WHERE application_name LIKE 'webhook-dispatcher/%%' "
            "AND query ILIKE 'LISTEN dispatcher_v1%%'"
        )
        listens = [float(r[0]) for r in await cur.fetchall()]
    assert listens, "READY was sent but no LISTEN connection is open"
    assert min(listens) <= ready_at, "READY was sent before LISTEN was established"

    watchdog_at = await notify_socket.wait_for(
        "WATCHDOG", count=len(notify_socket.having("WATCHDOG")) + 2, timeout=15
    )
    assert watchdog_at > ready_at
    assert all(m["WATCHDOG"] == "1" for _, m in notify_socket.having("WATCHDOG"))
    assert notify_socket.having("STOPPING") == []

    daemon.terminate()
    stopping_at = await notify_socket.wait_for("STOPPING", timeout=15)
    assert await daemon.wait_exit(30) == ExitCode.OK
    assert stopping_at > ready_at
    assert len(notify_socket.having("READY")) == 1


async def test_no_ready_when_the_schema_is_behind(
    empty_db_dsn: str, daemon_factory, notify_socket: NotifySocket
) -> None:
    daemon = daemon_factory(_daemon_env(notify_socket, DISPATCHER_DATABASE_URL=empty_db_dsn))
    assert await daemon.wait_exit(30) == ExitCode.SCHEMA_BEHIND
    assert "dispatcher migrate" in daemon.text()
    notify_socket.drain()
    assert notify_socket.having("READY") == []
