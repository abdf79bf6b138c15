"""What every operator command module shares: the parser leaf, connect-and-run, printing,
and the small parsers of flag values.

Command modules parse and print; validation and SQL live in the API modules (api.py,
sequences.py, quarantine.py, integrations.py). A handler is `fn(args, settings) -> exit code`,
given to the parser with `set_defaults(handler=fn)`; dispatcher/cli.py calls it. Bad input
raises InvalidInput/NotFound before anything is written; cli.main prints it as one line and
exits non-zero. Times and durations: see format.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any, TypeAlias, TypeVar
from uuid import UUID

from dispatcher import db, migrations
from dispatcher.admin import api
from dispatcher.admin.format import parse_time, parse_uuid, to_json
from dispatcher.errors import InvalidInput
from dispatcher.settings import Settings

T = TypeVar("T")
Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler: TypeAlias = Callable[[argparse.Namespace, Settings], int]


def leaf(group: Sub, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
    """A command that does something: its parser, --json, and the function that runs it."""
    p = group.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(handler=handler)
    return p


def run_db(settings: Settings, action: Callable[[api.Conn], Awaitable[T]]) -> T:
    """Connect, refuse a schema that is behind, run `action` on the connection."""

    async def go() -> T:
        conn = await db.connect(settings)
        async with conn:
            with api.translated():
                await migrations.check_current(conn)
            return await action(conn)

    return asyncio.run(go())


def emit(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    print(to_json(data) if args.json else human())


def warn(message: str) -> None:
    print(f"dispatcher: warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def resumable(command: str) -> Iterator[None]:
    """Ctrl-C during a long command: say that what was done is kept (exit 130)."""
    try:
        yield
    except KeyboardInterrupt:
        print(
            f"dispatcher: {command} interrupted: every batch counted above is committed; "
            "run the same command again to continue with what is left",
            file=sys.stderr,
        )
        raise


def opt_uuid(value: str | None, what: str) -> UUID | None:
    return None if value is None else parse_uuid(value, what)


def opt_time(value: str | None, what: str) -> datetime | None:
    return None if value is None else parse_time(value, what)


def int_arg(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"{what}: {value!r} is not a whole number") from None


def positive(value: str, what: str) -> int:
    n = int_arg(value, what)
    if n < 1:
        raise InvalidInput(f"{what}: {value!r} must be 1 or more")
    return n


def choice(value: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    if value is not None and value not in allowed:
        raise InvalidInput(f"{what}: {value!r} is not one of {', '.join(allowed)}")
    return value
