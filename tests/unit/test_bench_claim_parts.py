"""bench/claim_parts.py's variants are built from today's claim statement and candidates
function: every cut must still apply (a cut that no longer matches the tree's SQL is an error,
never a silent no-op that would report a part as free), and each one changes the text."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.claim_parts import CUTS, FUNCTION, variant


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_each_cut_applies_to_todays_claim_and_changes_it(cut: str) -> None:
    tree, _ = variant("tree", 0)
    text, setup = variant(f"cut:{cut}", 1)
    function_cut = any(where == "F" for where, _, _ in CUTS[cut])
    if function_cut:
        # the function's copy is renamed and called instead of the tree's
        assert FUNCTION not in text and "claim_cut1_v2" in text
        assert len(setup) == 1 and "claim_cut1_v2" in setup[0]
    else:
        assert text != tree and setup == []


def test_the_nine_cuts_of_the_record_apply_together() -> None:
    # docs/performance.md, "the claim statement, part by part" ("body" overlaps "columns")
    nine = "failing+window+ordered+seq+policy+secrets+hookcols+scan+columns"
    text, setup = variant(f"cut:{nine}", 2)
    assert "UPDATE public.webhook_deliveries" in text and len(setup) == 1


def test_inline_calls_no_function_and_keeps_the_row_locks() -> None:
    text, _ = variant("inline", 0)
    assert FUNCTION not in text
    assert "FOR UPDATE OF d SKIP LOCKED" in text


def test_prefixes_add_their_session_settings() -> None:
    tree, _ = variant("tree", 0)
    text, setup = variant("generic:tree", 0)
    assert text == tree and setup == ["SET plan_cache_mode = force_generic_plan"]


def test_the_measured_variants_load_as_claims() -> None:
    for path in sorted(Path("bench/claim_variants").glob("*.sql")):
        text, _ = variant(f"file:{path}", 0)
        assert "UPDATE public.webhook_deliveries" in text, path


def test_an_unknown_variant_is_refused() -> None:
    with pytest.raises(SystemExit):
        variant("fastest", 0)
