"""The dispatcher's errors, one family, each with a message an operator can act on."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes (documented in docs/operations.md)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    CONFIG = 3
    DATABASE_UNAVAILABLE = 4
    SCHEMA_BEHIND = 5
    PERMISSION = 6
    ADDRESS_UNAVAILABLE = 7
    INTERRUPTED = 130


class DispatcherError(Exception):
    """Base of every error the dispatcher raises on purpose."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(DispatcherError):
    """The configuration is invalid; the message names the setting."""

    exit_code = ExitCode.CONFIG


class DatabaseUnavailable(DispatcherError):
    """PostgreSQL could not be reached."""

    exit_code = ExitCode.DATABASE_UNAVAILABLE


class SchemaBehind(DispatcherError):
    """Migrations are pending: run `dispatcher migrate`."""

    exit_code = ExitCode.SCHEMA_BEHIND


class PermissionDenied(DispatcherError):
    """The database role lacks a privilege the dispatcher needs."""

    exit_code = ExitCode.PERMISSION


class NotFound(DispatcherError):
    """An id given on the command line or to the admin API does not exist."""

    exit_code = ExitCode.FAILURE


class InvalidInput(DispatcherError):
    """A value given by an operator is malformed or out of range."""

    exit_code = ExitCode.USAGE


class MigrationBlocked(DispatcherError):
    """`migrate` could not take its locks within lock_timeout after a few tries: another
    transaction holds them. Nothing was changed by the blocked migration; run it again."""

    exit_code = ExitCode.FAILURE


class InvalidIndex(DispatcherError):
    """An index a migration ships is marked invalid by PostgreSQL (an interrupted
    CREATE INDEX CONCURRENTLY): `CREATE INDEX IF NOT EXISTS` skips it and no query uses it.
    The message names it and how to rebuild it."""

    exit_code = ExitCode.FAILURE


class AddressUnavailable(DispatcherError):
    """A listening address (DISPATCHER_METRICS_ADDRESS) cannot be bound, most often because
    another replica on the same host already listens there."""

    exit_code = ExitCode.ADDRESS_UNAVAILABLE
