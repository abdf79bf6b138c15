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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from dispatcher.crypto import DecryptError, Keyring, encrypt_config
from dispatcher.progress import Progress, finishing
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
    conn: psycopg.AsyncConnection[Any],
    keyring: Keyring,
    *,
    rotate: bool,
    batch: int = 200,
    progress: Callable[[int | None], Progress] | None = None,
) -> Report:
    """``progress(total)`` makes the Progress that counts rows read (each batch once its
    transaction has committed). Interrupted and run again, it rewrites nothing twice: a
    value already under the primary key is read but left alone."""
    report = Report()
    meter = None
    if progress is not None:
        cur = await conn.execute(query("integ_reencrypt_count"))
        row = await cur.fetchone()
        total = int(row["n"]) if row else 0
        meter = progress(total) if total > batch else None

    def config_plan(row: dict[str, Any]) -> tuple[dict[str, Any], int]:
        try:
            new, n = encrypt_config(row["config"], keyring, rotate=rotate)
        except DecryptError as exc:
            raise _Unreadable(
                Problem("integrations", str(row["id"]), str(row["id"]), str(exc))
            ) from None
        return {"id": row["id"], "new": Jsonb(new), "old": Jsonb(row["config"])}, n

    def token_plan(row: dict[str, Any]) -> tuple[dict[str, Any], int]:
        values: dict[str, str | None] = {}
        n = 0
        for column in ("access_token", "refresh_token"):
            value = row[column]
            try:
                if keyring.needs_reencryption(value, rotate=rotate):
                    values[column] = keyring.encrypt(keyring.decrypt(value))
                    n += 1
                else:
                    values[column] = value
            except DecryptError as exc:
                raise _Unreadable(
                    Problem(
                        "integration_oauth_tokens",
                        str(row["id"]),
                        str(row["integration_id"]),
                        f"cannot decrypt integration_oauth_tokens.{column}: {exc}",
                    )
                ) from None
        old = {"old_access_token": row["access_token"], "old_refresh_token": row["refresh_token"]}
        return {"id": row["id"], **values, **old}, n

    with finishing(meter):
        await _rewrite(
            conn, "integ_config_batch", "integ_config_rewrite", config_plan, batch, report, meter
        )
        await _rewrite(
            conn, "integ_token_batch", "integ_token_rewrite", token_plan, batch, report, meter
        )
    return report


class _Unreadable(Exception):
    """A row holding a value no key decrypts: reported, never overwritten."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


async def _rewrite(
    conn: psycopg.AsyncConnection[Any],
    batch_query: str,
    rewrite_query: str,
    plan: Callable[[dict[str, Any]], tuple[dict[str, Any], int]],
    batch: int,
    report: Report,
    meter: Progress | None = None,
) -> None:
    """Walk a table in id order, one transaction per batch; `plan` gives each row's rewrite
    parameters and how many values it changes (0: leave the row alone)."""
    after = _FIRST
    while True:
        cur = await conn.execute(query(batch_query), {"after": after, "batch": batch})
        rows = await cur.fetchall()
        if not rows:
            return
        after = rows[-1]["id"]
        report.rows_read += len(rows)
        async with conn.transaction():
            for row in rows:
                try:
                    params, n = plan(row)
                except _Unreadable as exc:
                    report.problems.append(exc.problem)
                    continue
                if not n:
                    continue
                cur = await conn.execute(query(rewrite_query), params)
                if await cur.fetchone() is None:
                    report.raced += 1
                else:
                    report.rows_changed += 1
                    report.values_changed += n
        if meter is not None:
            meter.add(len(rows))
