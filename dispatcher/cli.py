"""The `dispatcher` command: run the daemon, migrate, and operator commands.

The parser is built here by calling each part's `register(sub)`: the core's run, migrate
and version (below), the operator commands (dispatcher/admin/), the demo
(dispatcher/demo/). Every command's parser carries its handler, a function
`(args, settings) -> exit code`, as `set_defaults(handler=fn)`.

Every command has --help. Errors print one line to stderr and exit non-zero
with the code of their kind (see errors.ExitCode).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeAlias

from dispatcher import __version__
from dispatcher.admin import cli as admin_cli
from dispatcher.admin import integrations_cli, quarantine_cli
from dispatcher.demo import walkthrough
from dispatcher.errors import DispatcherError, ExitCode
from dispatcher.logs import configure_logging
from dispatcher.settings import Settings, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]
Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatcher",
        description="Signed, durable webhook delivery from PostgreSQL. "
        "Configuration comes from DISPATCHER_* environment variables.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(sub)
    admin_cli.register(sub)  # webhooks, deliveries, dlq, recover, retry-config, stats
    walkthrough.register(sub)  # demo
    integrations_cli.register(sub)  # keys, secrets, integrations
    quarantine_cli.register(sub)
    return parser


def register(sub: Sub) -> None:
    """The core's commands: run, migrate, version."""
    p = sub.add_parser(
        "run",
        help="run the daemon (needs DISPATCHER_DATABASE_URL)",
        description="Run the daemon against DISPATCHER_DATABASE_URL (from the environment;"
        " docs/operations.md lists every DISPATCHER_* setting).",
    )
    p.set_defaults(handler=_run)
    p = sub.add_parser(
        "migrate",
        help="create or upgrade the database schema (needs DISPATCHER_DATABASE_URL)",
        description="Create or upgrade the dispatcher schema in the database at"
        " DISPATCHER_DATABASE_URL (a role that may create it: docs/operations.md).",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="only report pending migrations; exit 5 when there are some",
    )
    p.set_defaults(handler=_migrate)
    p = sub.add_parser("version", help="print the version")
    p.set_defaults(handler=_version)


def _version(_: argparse.Namespace, __: Settings) -> int:
    print(f"webhook-dispatcher {__version__}")
    return ExitCode.OK


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from dispatcher import db, migrations

    async def go() -> int:
        if args.check:
            conn = await db.connect(settings)
            async with conn:
                todo = await migrations.pending(conn)
            if todo:
                for m in todo:
                    print(f"pending: {m.version:04d}_{m.name}")
                return ExitCode.SCHEMA_BEHIND
            print("schema is current")
            return ExitCode.OK
        async with await db.connect(settings):  # a clear DatabaseUnavailable first
            pass
        applied = await migrations.apply_migrations(
            settings.dsn(),
            lock_timeout_ms=settings.migrate_lock_timeout_ms,
            attempts=settings.migrate_lock_attempts,
        )
        for name in applied:
            print(f"applied: {name}")
        if not applied:
            print("schema is current; nothing to apply")
        for warning in await migrations.invalid_index_warnings(settings.dsn()):
            print(f"warning: {warning}", file=sys.stderr)
        return ExitCode.OK

    return asyncio.run(go())


def _run(_: argparse.Namespace, settings: Settings) -> int:
    from dispatcher.app import App

    settings.dsn()  # ConfigError with what to set, before anything starts
    return int(_run_loop(App(settings).run()))


def _run_loop(coro: Coroutine[Any, Any, ExitCode]) -> int:
    """Run on uvloop when it is installed (faster I/O), else asyncio's own loop."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # absent on Windows
    except ImportError:
        return int(asyncio.run(coro))
    return int(uvloop.run(coro))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        handler: Handler = args.handler
        quiet = handler is not _run and not getattr(args, "verbose", False)
        configure_logging("warning" if quiet else settings.log_level, settings.log_format)
        return int(handler(args, settings))
    except DispatcherError as exc:
        print(f"dispatcher: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
