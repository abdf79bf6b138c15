"""Encrypt integration secrets in place: plaintext migration and key rotation.

``reencrypt(conn, keyring, rotate=False)`` encrypts every plaintext secret (sensitive keys of
``integrations.config``; ``integration_oauth_tokens.access_token`` and ``.refresh_token``);
with ``rotate=True`` it also re-encrypts every value under a key other than the primary one.
Rows are read in id order, in batches, each batch written in one transaction; a row is only
rewritten if it still holds what was read (the host may be writing concurrently), so the run is
idempotent and safe beside a running daemon. A value no key decrypts is reported, never
overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from dispatcher.crypto import DecryptError, Keyring, encrypt_config
from dispatcher.queries import query

_FIRST = UUID(int=0)


@dataclass(slots=True)
class Problem:
    table: str
    row_id: str
    integration_id: str
    message: str


@dataclass(slots=True)
class Report:
    rows_read: int = 0
    rows_changed: int = 0
    values_changed: int = 0
    raced: int = 0  # rows changed by someone else meanwhile: run again to cover them
    problems: list[Problem] = field(default_factory=list)


async def reencrypt(
    conn: psycopg.AsyncConnection[Any], keyring: Keyring, *, rotate: bool, batch: int = 200
) -> Report:
    report = Report()
    await _configs(conn, keyring, rotate, batch, report)
    await _tokens(conn, keyring, rotate, batch, report)
    return report


async def _configs(
    conn: psycopg.AsyncConnection[Any], keyring: Keyring, rotate: bool, batch: int, report: Report
) -> None:
    after = _FIRST
    while True:
        cur = await conn.execute(query("integ_config_batch"), {"after": after, "batch": batch})
        rows = await cur.fetchall()
        if not rows:
            return
        after = rows[-1]["id"]
        report.rows_read += len(rows)
        async with conn.transaction():
            for row in rows:
                try:
                    new, n = encrypt_config(row["config"], keyring, rotate=rotate)
                except DecryptError as exc:
                    report.problems.append(
                        Problem("integrations", str(row["id"]), str(row["id"]), str(exc))
                    )
                    continue
                if not n:
                    continue
                cur = await conn.execute(
                    query("integ_config_rewrite"),
                    {"id": row["id"], "new": Jsonb(new), "old": Jsonb(row["config"])},
                )
                if await cur.fetchone() is None:
                    report.raced += 1
                else:
                    report.rows_changed += 1
                    report.values_changed += n


async def _tokens(
    conn: psycopg.AsyncConnection[Any], keyring: Keyring, rotate: bool, batch: int, report: Report
) -> None:
    after = _FIRST
    while True:
        cur = await conn.execute(query("integ_token_batch"), {"after": after, "batch": batch})
        rows = await cur.fetchall()
        if not rows:
            return
        after = rows[-1]["id"]
        report.rows_read += len(rows)
        async with conn.transaction():
            for row in rows:
                values: dict[str, str | None] = {}
                n = 0
                try:
                    for column in ("access_token", "refresh_token"):
                        value = row[column]
                        if keyring.needs_reencryption(value, rotate=rotate):
                            values[column] = keyring.encrypt(keyring.decrypt(value))
                            n += 1
                        else:
                            values[column] = value
                except DecryptError as exc:
                    report.problems.append(
                        Problem(
                            "integration_oauth_tokens",
                            str(row["id"]),
                            str(row["integration_id"]),
                            f"cannot decrypt integration_oauth_tokens.{column}: {exc}",
                        )
                    )
                    continue
                if not n:
                    continue
                cur = await conn.execute(
                    query("integ_token_rewrite"),
                    {
                        "id": row["id"],
                        **values,
                        "old_access_token": row["access_token"],
                        "old_refresh_token": row["refresh_token"],
                    },
                )
                if await cur.fetchone() is None:
                    report.raced += 1
                else:
                    report.rows_changed += 1
                    report.values_changed += n
