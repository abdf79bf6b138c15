"""A throwaway PostgreSQL for `dispatcher demo`, in a temp dir removed at exit.

Server binaries: the system's (`pg_config --bindir`, else `initdb` on PATH) when
present, else the `pgserver` wheel, which bundles PostgreSQL 16 (install it with
`pip install 'webhook-dispatcher[embedded]'`). The server listens on a Unix
socket inside its temp dir only: no TCP port is opened, nothing can clash.

PostgreSQL refuses to run as root. As root, system binaries run as the
`postgres` user (else `nobody`) through runuser or setpriv; pgserver handles
root itself (it runs the server as a `pgserver` system user, created if missing,
and opens read/execute permissions on the paths to its data and binaries).

Never used by `dispatcher run`: the daemon only talks to a database it is given.
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
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from dispatcher.errors import DispatcherError

Source = Literal["auto", "system", "pgserver"]

SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
UNPRIVILEGED_USERS = ("postgres", "nobody")
PORT = 5432  # only names the socket file (.s.PGSQL.5432) in our own directory
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for the file name
_SETTINGS = {  # a demo's data is throwaway: trade durability for speed
    "listen_addresses": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "50",
}


class EmbeddedError(DispatcherError):
    """The throwaway PostgreSQL could not be started."""


class EmbeddedPostgres:
    """`with EmbeddedPostgres() as pg: dsn = pg.dsn` starts, then stops and deletes it."""

    def __init__(self, source: Source = "auto") -> None:
        self.source = source
        self.description = ""
        self.dsn = ""
        self.root: Path | None = None
        self._bindir: Path | None = None
        self._prefix: list[str] = []
        self._server: Any = None  # pgserver.PostgresServer
        self._running = False

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- public -------------------------------------------------------------------
    def start(self) -> str:
        """Start the server; returns its DSN. EmbeddedError says what is missing."""
        atexit.register(self.stop)
        bindir = system_bindir() if self.source in ("auto", "system") else None
        try:
            if bindir is not None:
                self._start_system(bindir)
            elif self.source == "system":
                raise EmbeddedError("no system PostgreSQL found (pg_config --bindir, initdb)")
            else:
                self._start_pgserver()
        except BaseException:
            self.stop()
            raise
        self._running = True
        return self.dsn

    def stop(self) -> None:
        """Stop the server and delete its directory. Idempotent; never raises."""
        atexit.unregister(self.stop)
        self._running = False
        if self._server is not None:
            server, self._server = self._server, None
            with contextlib.suppress(Exception):
                server.cleanup()
        elif self._bindir is not None and self.root is not None:
            data = self.root / "data"
            if (data / "postmaster.pid").exists():
                try:
                    self._run("pg_ctl", ["-D", str(data), "-m", "fast", "-w", "-t", "20", "stop"])
                except EmbeddedError:
                    _kill_postmaster(data)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # -- system binaries ----------------------------------------------------------
    def _start_system(self, bindir: Path) -> None:
        self._bindir = bindir
        user = unprivileged_user()
        self._prefix = command_prefix(user)
        self.root = _make_root(user)
        data = self.root / "data"
        self._run(
            "initdb",
            ["-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"],
            timeout=120,
        )
        conf = {**_SETTINGS, "unix_socket_directories": f"'{self.root}'", "port": str(PORT)}
        with (data / "postgresql.conf").open("a") as fh:
            fh.write("\n# dispatcher demo\n")
            fh.writelines(f"{key} = {value}\n" for key, value in conf.items())
        log = self.root / "postgres.log"
        self._run("pg_ctl", ["-D", str(data), "-l", str(log), "-w", "-t", "60", "start"], 90)
        self.dsn = f"host={self.root} port={PORT} user=postgres dbname=postgres"
        version = _version(bindir)
        runs_as = f", run as user {user.pw_name}" if user else ""
        self.description = f"system PostgreSQL {version} from {bindir}{runs_as}"

    def _run(self, program: str, args: Sequence[str], timeout: float = 60) -> None:
        assert self._bindir is not None
        argv = [*self._prefix, str(self._bindir / program), *args]
        try:
            done = subprocess.run(
                argv,
                cwd=self.root,
                env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                start_new_session=True,  # Ctrl-C in the terminal must not reach the server
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise EmbeddedError(f"{program} failed: {exc}") from None
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise EmbeddedError(
                f"{program} exited {done.returncode}: {detail[-1] if detail else 'no output'}"
            )

    # -- pgserver wheel -----------------------------------------------------------
    def _start_pgserver(self) -> None:
        try:
            with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
                warnings.simplefilter("ignore")
                from pgserver.postgres_server import get_server
        except ImportError:
            raise EmbeddedError(
                "no PostgreSQL available: install PostgreSQL, or the bundled one with "
                "`pip install 'webhook-dispatcher[embedded]'`, or set DISPATCHER_DATABASE_URL"
            ) from None
        self.root = _make_root(None)
        try:
            self._server = get_server(self.root / "pgdata", cleanup_mode="delete")
        except Exception as exc:
            raise EmbeddedError(f"pgserver could not start PostgreSQL: {exc}") from None
        self.dsn = str(self._server.get_uri())
        self.description = "PostgreSQL 16 bundled in the pgserver wheel"


def system_bindir() -> Path | None:
    """The directory of the system's initdb, pg_ctl and postgres, if installed."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if all(os.access(bindir / p, os.X_OK) for p in SERVER_PROGRAMS):
            return bindir
    return None


def pgserver_available() -> bool:
    return importlib.util.find_spec("pgserver") is not None


def _version(bindir: Path) -> str:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    found = re.search(r"\d+(\.\d+)*", out.stdout)
    return found.group(0) if found else "?"


def unprivileged_user() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as when we are root (initdb refuses root), else None."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise EmbeddedError(f"running as root and none of the users {UNPRIVILEGED_USERS} exists")


def command_prefix(user: pwd.struct_passwd | None) -> list[str]:
    """argv prefix that runs a command as `user` (runuser, else setpriv); [] for None."""
    if user is None:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", user.pw_name, "--"]
    if shutil.which("setpriv"):
        ids = [f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}"]
        return ["setpriv", *ids, "--clear-groups", "--"]
    raise EmbeddedError("running as root but neither runuser nor setpriv is available")


def _make_root(user: pwd.struct_passwd | None) -> Path:
    """A private temp dir short enough for a socket path, reachable by `user`."""
    base = Path(tempfile.gettempdir())
    too_long = len(str(base)) + 40 > SOCKET_PATH_MAX
    hidden = user is not None and not all(
        p.stat().st_mode & stat.S_IXOTH for p in (base, *base.parents)
    )
    where = "/tmp" if too_long or hidden else None
    root = Path(tempfile.mkdtemp(prefix="dispatcher-demo-", dir=where))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    return root


def _kill_postmaster(data: Path) -> None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)
