"""psycopg parses a statement's %(name)s placeholders once and caches the result only for
texts up to its limit (4 KiB by default); dispatcher.db raises that limit so that our long
statements (delivery_fan_out, delivery_record_outcomes, delivery_claim_due) are parsed once
per process, not on every execute (issue 12: 15-60 us of the daemon's CPU per call)."""

from __future__ import annotations

import re

import pytest
from psycopg import _queries
from psycopg.adapt import Transformer

import dispatcher.db
from dispatcher.queries import _all, query

HOT = ("delivery_fan_out", "delivery_record_outcomes", "delivery_claim_due")


def test_every_statement_fits_the_cache() -> None:
    assert dispatcher.db.cache_long_statements() is True
    longest = max(len(sql.encode()) for sql in _all().values())
    assert longest <= _queries.MAX_CACHED_STATEMENT_LENGTH, longest


@pytest.mark.parametrize("name", HOT)
def test_a_hot_statement_is_parsed_once(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sql = query(name)
    params = {k: 1 for k in re.findall(r"%\((\w+)\)s", sql)}
    assert len(params) <= _queries.MAX_CACHED_STATEMENT_PARAMS
    parsed: list[bytes] = []
    split = _queries._split_query

    def counting(q: bytes, *args: object, **kwargs: object) -> object:
        parsed.append(q)
        return split(q, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_queries, "_split_query", counting)
    tx = Transformer()
    for _ in range(3):
        _queries.PostgresQuery(tx).convert(sql, params)
    assert len(parsed) <= 1, f"{name} parsed on every execute ({len(parsed)} times in 3)"
