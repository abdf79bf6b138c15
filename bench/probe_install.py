"""Installing a probe into a frozen copy of the tree (bench/loop_probe.py, bench/slot_probe.py):
the probe module under dispatcher/, a dispatcher/__main__.py that imports it first, and a dump
of what it measured added to one scenario of bench/scenarios.py at an anchor line."""

from __future__ import annotations

from pathlib import Path

# Probe text both loop_probe and tail_probe install: a "run" record when an attempt starts
# and a "record" record around each outcome write. It expects the probe's `_dl` (dispatcher.
# delivery), `_r` (dispatcher.recorder), `_w` (write one record) and `_now` (its clock).
ATTEMPT_WRAPS = """_deliver = _dl.Attempts.deliver
async def deliver(self, d):
    _w("run", str(d.id), _now())
    return await _deliver(self, d)
_dl.Attempts.deliver = deliver

_write = _r.Recorder._write
async def _rec_write(self, batch):
    t0 = _now()
    try:
        return await _write(self, batch)
    finally:
        _w("record", t0, _now(), len(batch))
_r.Recorder._write = _rec_write
"""


def install_probe(
    snapshot: Path,
    out: Path,
    *,
    module: str,
    probe: str,
    main: str,
    scenario: str,
    anchor: str,
    dump: str,
) -> None:
    """Write `probe` as dispatcher/`module`.py and `main` as dispatcher/__main__.py in
    `snapshot`, and put `dump` in place of `anchor` in its bench/scenarios.py (`scenario`'s);
    "@OUT@" in `probe` and `dump` becomes `out`, the directory the probe writes to."""
    out.mkdir(parents=True, exist_ok=True)
    scenarios = snapshot / "bench" / "scenarios.py"
    text = scenarios.read_text()
    if anchor not in text:
        raise SystemExit(f"{scenarios}: {scenario}'s anchor not found (bench changed?)")
    text = text.replace(anchor, dump.replace("@OUT@", str(out)), 1)
    if "\nimport json\n" not in text:
        text = text.replace("\nimport asyncio\n", "\nimport asyncio\nimport json\n", 1)
    scenarios.write_text(text)
    (snapshot / "dispatcher" / f"{module}.py").write_text(probe.replace("@OUT@", str(out)))
    (snapshot / "dispatcher" / "__main__.py").write_text(main)
