"""bench/slow_timeline.py splits a slow endpoint's request at the receiver's stamps: its
own time (read, sleep, write) and the time outside it on each connection, from a response
written to the next request's handler entered. Synthetic traces: nothing is timed."""

from __future__ import annotations

from typing import Any

from bench.slow_timeline import client_report, receiver_report


def _row(port: int, entered: float, delivery: str) -> list[Any]:
    """A /slow/ request entered at `entered` s: body read 1 ms later, asleep 50 ms, the
    answer written 1 ms after the sleep returned."""
    return ["/slow/x", port, entered, entered + 0.001, entered + 0.051, entered + 0.052, delivery]


def test_the_time_outside_is_per_connection_from_an_answer_to_the_next_request() -> None:
    # two connections; on each the next request enters 3 ms (port 1) and 5 ms (port 2) after
    # the answer before it was written
    rows = [
        _row(1, 0.000, "a"),
        _row(2, 0.000, "b"),
        _row(1, 0.055, "c"),
        _row(2, 0.057, "d"),
    ]
    figures = receiver_report(rows, concurrency=2)
    assert figures["requests"] == 4
    assert figures["connections"] == 2
    assert figures["outside_ms"] == "4.00 / 5.00 / 5.00"  # mean / p50 / p90 of 3 and 5 ms
    assert figures["sleep_ms"] == "50.00 / 50.00 / 50.00"
    assert figures["inside_ms"] == "52.00 / 52.00 / 52.00"


def test_requests_outside_the_slow_path_are_left_out() -> None:
    rows = [_row(1, 0.0, "a"), ["/paired", 1, 0.1, 0.1, 0.1, 0.1, "p"]]
    assert receiver_report(rows, concurrency=1)["requests"] == 1
    assert receiver_report([rows[1]], concurrency=1) == {}


def test_the_client_side_splits_the_time_outside_into_back_and_out() -> None:
    rows = [_row(1, 0.000, "a"), _row(1, 0.055, "b")]
    client = {
        "start": 0.0,
        "end": 0.11,
        # (delivery id, POST begun, headers back, body read): each answer seen 1 ms after
        # it was written; "b" begun at 53.5 ms and entered the receiver at 55 ms
        "trace": [["a", -0.001, 0.053, 0.053], ["b", 0.0535, 0.108, 0.108]],
    }
    figures = client_report(client, rows)
    assert figures["joined"] == 2
    assert figures["back_ms"] == "1.00 / 1.00 / 1.00"
    assert figures["turn_ms"] == "0.50 / 0.50 / 0.50"  # "a" read at 53, "b" begun at 53.5
    assert figures["out_ms"].startswith("1.25 /")  # 1 ms ("a") and 1.5 ms ("b")


def test_the_requests_signature_splits_the_time_outside_at_the_client() -> None:
    # "b" signed in the 53rd ms (taken as 53.5 ms): 1.5 ms after "a"'s answer was written,
    # 1.5 ms before it entered the receiver's handler
    a = [*_row(1, 0.000, "a"), "1970-01-01T00:00:00.000Z"]
    b = [*_row(1, 0.055, "b"), "1970-01-01T00:00:00.053Z"]
    figures = receiver_report([a, b], concurrency=1)
    assert figures["to_signed_ms"] == "1.50 / 1.50 / 1.50"
    assert figures["signed_to_entered_ms"] == "1.50 / 1.50 / 1.50"
