"""`hot_info`, the per-attempt line's cheap path, writes what structlog's configured chain
writes for the same call: same keys in the same order, same values, one flushed line; it
steps aside whenever that chain is not the one in force."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from dispatcher.logs import _JsonLines, configure_logging, hot_info

log = structlog.get_logger("tests.hot_info")


def fields() -> dict[str, object]:
    return {
        "delivery_id": uuid.UUID(int=1),
        "webhook_id": uuid.UUID(int=2),
        "event_type": "job.created",
        "attempt": 3,
        "retry_in": 1.25,
        "error": 'HTTP 503: "busy"\nline two',
        "notes": ["ignored header: Connection"],
        "odd": Decimal("1.5"),  # through _dumps' default=str, as the chain does
        "none": None,
    }


@pytest.fixture(autouse=True)
def _restore_logging():
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
    structlog.contextvars.clear_contextvars()


def both_lines(**kw: object) -> tuple[dict[str, Any], dict[str, Any], str]:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    log.info("delivery_attempt", **kw)
    hot_info(log, "delivery_attempt", **kw)
    text = stream.getvalue()
    chain, hot = (json.loads(line) for line in text.splitlines())
    return chain, hot, text


def test_the_line_is_the_chains_line_key_for_key() -> None:
    chain, hot, text = both_lines(**fields())
    assert text.count("\n") == 2 and text.endswith("}\n")
    assert list(hot) == list(chain)
    assert {k: v for k, v in hot.items() if k != "timestamp"} == {
        k: v for k, v in chain.items() if k != "timestamp"
    }
    assert hot["odd"] == "1.5" and hot["delivery_id"] == str(uuid.UUID(int=1))


def test_bound_context_variables_are_merged_as_the_chain_merges_them() -> None:
    structlog.contextvars.bind_contextvars(request_id="r-1", attempt="from the context")
    chain, hot, _ = both_lines(**fields())
    assert list(hot) == list(chain)
    assert hot["request_id"] == chain["request_id"] == "r-1"
    assert hot["attempt"] == chain["attempt"] == 3  # the call's value wins


def test_timestamps_are_isoformat_utc_with_z_at_every_fraction() -> None:
    lines = _JsonLines(io.StringIO(), structlog.get_config())
    start = datetime(2026, 12, 31, 23, 59, 58, tzinfo=UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for step in (0, 1, 999_999, 1_000_000, 1_000_001, 1_500_000, 2_000_000, 2_000_123):
        at = start + timedelta(microseconds=step)
        micros = (at - epoch) // timedelta(microseconds=1)
        expected = at.isoformat().replace("+00:00", "Z")
        assert lines._stamp(micros) == expected
        assert lines._stamp(micros) == expected  # from the cached second too


def test_under_capture_logs_the_line_goes_to_the_capture() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    with capture_logs() as logs:
        hot_info(log, "delivery_attempt", attempt=1)
    assert stream.getvalue() == ""
    assert logs == [{"event": "delivery_attempt", "attempt": 1, "log_level": "info"}]


def test_above_info_nothing_is_written() -> None:
    stream = io.StringIO()
    configure_logging("warning", "json", stream=stream)
    hot_info(log, "delivery_attempt", **fields())
    assert stream.getvalue() == ""


def test_on_a_console_the_chains_renderer_writes_it() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream=stream)
    hot_info(log, "delivery_attempt", delivery_id=uuid.UUID(int=1))
    text = stream.getvalue()
    assert "delivery_attempt" in text and not text.startswith("{")
    assert str(uuid.UUID(int=1)) in text


def test_a_bound_logger_goes_through_the_chain_with_its_context() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    for bound in (log.bind(worker="w1"), structlog.get_logger("tests.hot_info", worker="w1")):
        hot_info(bound, "delivery_attempt", attempt=1)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["worker"] for line in lines] == ["w1", "w1"]


def test_fields_the_chain_treats_otherwise_go_through_it() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    try:
        raise ValueError("boom")
    except ValueError:
        hot_info(log, "delivery_attempt", exc_info=True)
    (line,) = (json.loads(x) for x in stream.getvalue().splitlines())
    # dict_tracebacks rendered it: a structured exception, not the text "True"
    assert line["exception"][0]["exc_type"] == "ValueError"
    with pytest.raises(TypeError):  # as log.info does: `event` twice
        hot_info(log, "delivery_attempt", event="other")
