"""X-InTime-Event takes the whole type from the signed body when the row's column cut it."""

from __future__ import annotations

import orjson

from dispatcher.claims import full_event_type

LONG = "a." + "b" * 148


def test_short_types_are_the_columns() -> None:
    assert full_event_type("job.created", orjson.dumps({"type": "other"}).decode()) == (
        "job.created"
    )


def test_a_cut_type_is_completed_from_the_body() -> None:
    body = orjson.dumps({"type": LONG, "data": {}}).decode()
    assert full_event_type(LONG[:100], body) == LONG


def test_a_body_that_does_not_continue_the_column_is_ignored() -> None:
    assert full_event_type(LONG[:100], orjson.dumps({"type": "x" + LONG}).decode()) == LONG[:100]
    assert full_event_type(LONG[:100], "not json") == LONG[:100]
    assert full_event_type(LONG[:100], "[1]") == LONG[:100]
    assert full_event_type(LONG[:100], None) == LONG[:100]
