"""Event-type pattern matching for webhook subscriptions.

A webhook's ``events`` column holds event names or patterns. The supported forms (see
docs/host-contract.md, "Requests") are, and are only:

* ``*`` alone: every event.
* ``prefix.*`` (ends with ``.*``, no other ``*``): any event that starts with ``prefix.`` and is
  longer than it, i.e. at least one more segment at any depth below ``prefix``
  (``recruiting.*`` matches ``recruiting.x`` and ``recruiting.job.created``, not ``recruiting``).
* ``*.suffix`` (starts with ``*.``, no other ``*``): any event that ends with ``.suffix`` and is
  longer than it (at least one segment before, any depth).
* ``*`` as a whole middle segment (``job.*.failed``, ``a.*.*.d``): the first and last segments
  contain no ``*``; each middle ``*`` segment matches exactly one non-empty segment, every other
  segment compares exactly, and the segment counts must be equal.
* Anything else (``job*``, ``jo*b.x``, ``*.*``, ``job.*.*``, the empty string) is compared to the
  event type as an exact name.

Matching is case-sensitive. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["matches", "matches_any"]


def _middle_wildcard_match(pattern: str, event_type: str) -> bool | None:
    """Match a ``a.*.b``-style pattern; None when ``pattern`` is not of that form."""
    parts = pattern.split(".")
    if len(parts) < 3 or "*" in parts[0] or "*" in parts[-1]:
        return None
    middle = parts[1:-1]
    if "*" not in middle or any("*" in p and p != "*" for p in middle):
        return None
    segments = event_type.split(".")
    if len(segments) != len(parts):
        return False
    return all(
        (seg != "") if pat == "*" else (seg == pat)
        for pat, seg in zip(parts, segments, strict=True)
    )


def matches(pattern: str, event_type: str) -> bool:
    """Return True when ``event_type`` is selected by ``pattern`` (rules: module docstring)."""
    if pattern == "*":
        return True
    if pattern.endswith(".*") and "*" not in pattern[:-2]:
        prefix = pattern[:-1]  # keeps the trailing dot
        return event_type.startswith(prefix) and len(event_type) > len(prefix)
    if pattern.startswith("*.") and "*" not in pattern[2:]:
        suffix = pattern[1:]  # keeps the leading dot
        return event_type.endswith(suffix) and len(event_type) > len(suffix)
    middle = _middle_wildcard_match(pattern, event_type)
    if middle is not None:
        return middle
    return pattern == event_type


def matches_any(patterns: Iterable[str], event_type: str) -> bool:
    """Return True when any of ``patterns`` matches ``event_type`` (False for no patterns)."""
    return any(matches(p, event_type) for p in patterns)
