"""The progress display: a bar on a terminal, rate-limited JSON lines otherwise."""

from __future__ import annotations

import io
import json

import pytest

from dispatcher.progress import Progress, finishing


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_when_not_a_terminal_are_rate_limited_and_carry_rate_and_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress("recover", 1000, unit="events", stream=out, tty=False, every=5.0, clock=clock)
    for _ in range(4):  # 4 batches within 4 s: no line between the first and the fifth second
        clock.now += 1.0
        p.add(100)
    clock.now += 1.0
    p.add(100)  # 5 s after the first line
    p.finish()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(x["state"], x["done"]) for x in lines] == [
        ("running", 0),
        ("running", 500),
        ("finished", 500),
    ]
    mid = lines[1]
    assert mid["total"] == 1000 and mid["percent"] == 50.0
    assert mid["rate"] == 100.0 and mid["eta_seconds"] == 5.0
    assert mid["operation"] == "recover" and mid["unit"] == "events"


def test_bar_on_a_terminal():
    clock, out = Clock(), io.StringIO()
    p = Progress("dlq_retry", 200, stream=out, tty=True, clock=clock)
    clock.now += 2.0
    p.add(50)
    text = out.getvalue().split("\r")[-1]
    assert text.startswith("dlq retry  [######------------------]  50/200  25%  25/s  ETA 0:06")
    clock.now += 1.0
    p.finish("interrupted")
    assert out.getvalue().split("\r")[-1].rstrip().endswith("interrupted in 0:03\x1b[K")


def test_unknown_total_has_no_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress("purge", None, stream=out, tty=True, clock=clock)
    clock.now += 1.0
    p.add(10)
    assert "10 rows  10/s  ETA -" in out.getvalue()


@pytest.mark.parametrize(
    ("exc", "state"),
    [(None, "finished"), (KeyboardInterrupt, "interrupted"), (ValueError, "failed")],
)
def test_finishing_states(exc, state):
    out = io.StringIO()
    p = Progress("x", 2, stream=out, tty=False)
    if exc is None:
        with finishing(p):
            p.add(2)
    else:
        with pytest.raises(exc), finishing(p):
            raise exc
    assert json.loads(out.getvalue().splitlines()[-1])["state"] == state
