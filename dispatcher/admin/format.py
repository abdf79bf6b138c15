"""Input parsing and output rendering for the operator CLI (no I/O).

Times are ISO-8601 (`2025-12-05T14:00:00Z`, `2025-12-05`; without an offset they
are UTC) or an age: a number and a unit, `s`, `m`, `h`, `d` or `w`, meaning that
long ago (`90s`, `30m`, `2h`, `3d`, `1w`, optionally followed by ` ago`), or
`now`. Durations use the same units (`24h`, `0`). Output is a plain text table
or key/value block for people, or JSON for scripts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson

from dispatcher.errors import InvalidInput

_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])(?:\s+ago)?$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TIME_HELP = "ISO-8601 (2025-12-05T14:00:00Z; UTC when no offset) or an age such as 30m, 2h, 3d"
MAX_CELL = 60


def parse_duration(text: str, what: str = "duration") -> timedelta:
    """`90s`, `30m`, `24h`, `3d`, `1w`, or a number of seconds (`0`)."""
    raw = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", raw):
        return timedelta(seconds=float(raw))
    m = _AGE.match(raw)
    if m is None or raw.lower().endswith("ago"):
        raise InvalidInput(
            f"{what}: {text!r} is not a duration: use a number and a unit, such as 30m, 24h, 3d"
        )
    try:
        return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2).lower()])
    except OverflowError:
        raise InvalidInput(f"{what}: {text!r} is too long") from None


def parse_time(text: str, what: str = "time", *, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from ISO-8601, an age (`2h` = two hours ago) or `now`."""
    raw = text.strip()
    now = now or datetime.now(UTC)
    if raw.lower() == "now":
        return now
    m = _AGE.match(raw)
    if m is not None:
        try:
            return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2).lower()])
        except OverflowError:
            raise InvalidInput(f"{what}: {text!r} is too far in the past") from None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidInput(f"{what}: {text!r} is not a time: use {TIME_HELP}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_uuid(text: str, what: str = "id") -> UUID:
    try:
        return UUID(text.strip())
    except ValueError:
        raise InvalidInput(f"{what}: {text!r} is not a UUID") from None


# -- output -----------------------------------------------------------------------


def to_json(value: Any) -> str:
    """Indented JSON: UUIDs and times as strings (RFC 3339), intervals in seconds."""

    def default(obj: Any) -> Any:
        if isinstance(obj, timedelta):
            return obj.total_seconds()
        return str(obj)

    return orjson.dumps(
        value, default=default, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    ).decode()


def cell(value: Any, width: int | None = MAX_CELL) -> str:
    """One value for people: `-` for none, UTC times to the second, lists comma-joined."""
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, datetime):
        text = when(value)
    elif isinstance(value, date):
        text = value.isoformat()
    elif isinstance(value, timedelta):
        text = age(value)
    elif isinstance(value, list | tuple):
        text = ", ".join(cell(v, None) for v in value) or "-"
    elif isinstance(value, Mapping):
        text = to_json(value).replace("\n", " ") if value else "-"
    else:
        text = str(value)
    text = " ".join(text.split()) if width is not None else text
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def when(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age(delta: timedelta) -> str:
    """`42s`, `5m 3s`, `2h 10m`, `3d 4h`."""
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours}h"
    if hours:
        return f"{sign}{hours}h {minutes}m"
    if minutes:
        return f"{sign}{minutes}m {secs}s"
    return f"{sign}{secs}s"


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Aligned columns; `columns` are (key, heading)."""
    body = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    head = [heading for _, heading in columns]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(columns))]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
        for r in [head, *body]
    ]
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """A `label: value` block, labels aligned."""
    if not pairs:
        return ""
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label + ':':<{width + 1}} {cell(value, None)}" for label, value in pairs)
