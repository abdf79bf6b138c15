"""bench/fanout_parts.py's session prefixes: `generic:` and `custom:` run a variant's own text on
a connection whose plan_cache_mode is forced, as `notrig:` does for triggers, so that one
replay says what the prepared statement's plan choice costs per call."""

from __future__ import annotations

import pytest

from bench.fanout_parts import PREFIXES, variant


@pytest.mark.parametrize(
    ("prefix", "setting"),
    [
        ("generic:", "SET plan_cache_mode = force_generic_plan"),
        ("custom:", "SET plan_cache_mode = force_custom_plan"),
        ("notrig:", "SET session_replication_role = replica"),
    ],
)
def test_a_prefixed_variant_runs_the_same_text_under_its_session_setting(
    prefix: str, setting: str
) -> None:
    assert PREFIXES[prefix] == setting
    assert variant(prefix + "tree") == variant("tree")
    assert variant(prefix + "cut:seq") == variant("cut:seq")


def test_an_unknown_variant_is_refused() -> None:
    with pytest.raises(SystemExit):
        variant("planless:tree")


def test_the_idle_writes_can_be_cut_one_by_one() -> None:
    tree = variant("tree")
    assert "INSERT INTO dispatcher.held" in tree and tree.count("UPDATE dispatcher.outbox") == 2
    cut = variant("cut:held+deferred+unreadable")
    assert "INSERT INTO dispatcher.held" not in cut
    assert "UPDATE dispatcher.outbox" not in cut
    assert "DELETE FROM dispatcher.outbox" in cut  # the outbox rows taken are still deleted
