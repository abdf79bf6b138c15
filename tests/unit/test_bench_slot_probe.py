"""bench/slot_probe.py cuts a slow endpoint's slot turn at the daemon's stamps: from an
answer written by the receiver to the next request on that slot (the queued row the
answer's done callback started) entering the receiver's handler. Synthetic stamps: nothing
is timed."""

from __future__ import annotations

from typing import Any

from bench.slot_probe import slot_turns


def _rows(*rows: tuple[str, float, float]) -> list[list[Any]]:
    """(id, entered, written) -> the receiver's trace rows."""
    return [["/slow/x", 1, e, e, w, w, i, ""] for i, e, w in rows]


def test_a_slot_turn_is_cut_at_each_stamp_between_an_answer_and_the_next_request() -> None:
    rows = _rows(("a", 0.000, 0.050), ("b", 0.060, 0.110))
    stamps: list[list[Any]] = [
        ["task", "a", -0.002],
        ["signed", "a", -0.001],
        ["answer", "a", 0.051],  # 1 ms after the receiver wrote it
        ["done", "a", 0.053],  # 2 ms: outcome, task end, the callback's hop
        ["next", "a", "b"],  # a's done callback started b
        ["task", "b", 0.056],  # 3 ms: the new task's hop
        ["signed", "b", 0.0565],  # 0.5 ms
        ["answer", "b", 0.111],
        ["done", "b", 0.112],
    ]
    turns = slot_turns(stamps, rows)
    assert [round(turns[k][0], 3) for k in turns] == [1.0, 2.0, 3.0, 0.5, 3.5, 10.0]
    assert list(turns) == ["back", "to_done", "to_task", "to_signed", "to_entered", "outside"]


def test_a_row_started_by_a_claim_is_not_a_slot_turn() -> None:
    rows = _rows(("a", 0.000, 0.050), ("c", 0.001, 0.051))
    stamps = [["task", "a", 0.0], ["task", "c", 0.0], ["answer", "a", 0.051]]
    assert slot_turns(stamps, rows)["outside"] == []
