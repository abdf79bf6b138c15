"""The start-up check reads what to check from least_privilege.sql (preflight.needs_from_script):
one list of privileges, the one the script grants."""

from __future__ import annotations

from importlib import resources

import pytest

from dispatcher.preflight import CORE, INTEGRATIONS, READ_TABLES, Need, needs_from_script

SCRIPT = """
-- GRANT dispatcher TO dispatcher_daemon;   (a comment: not a grant to read)
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO dispatcher', current_database());
    EXECUTE format('REVOKE ALL ON %s FROM dispatcher', 'public.events');
END
$$;
REVOKE ALL ON ALL TABLES IN SCHEMA own FROM dispatcher;
GRANT USAGE ON SCHEMA own TO dispatcher;
GRANT SELECT ON public.things TO dispatcher;
GRANT UPDATE (a, b)
    ON public.things TO dispatcher;
GRANT SELECT, DELETE ON ALL TABLES IN SCHEMA own TO dispatcher;
REVOKE DELETE ON own.ledger FROM dispatcher;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA own TO dispatcher;
ALTER DEFAULT PRIVILEGES IN SCHEMA own GRANT SELECT ON TABLES TO dispatcher;
DO $$
BEGIN
    IF to_regclass('public.extra') IS NOT NULL THEN
        GRANT SELECT, INSERT ON public.extra TO dispatcher;
    END IF;
    IF to_regprocedure('public.publish_event(text, uuid)') IS NOT NULL THEN
        GRANT EXECUTE ON FUNCTION public.publish_event(text, uuid) TO dispatcher;
        GRANT INSERT (event_type, payload) ON public.events TO dispatcher;
    END IF;
END
$$;
"""


def test_top_level_grants_are_the_core_and_do_blocks_the_optional_ones() -> None:
    core, optional = needs_from_script(SCRIPT)
    assert core == (
        Need("schema", "own", "own", "USAGE"),
        Need("table", "public", "things", "SELECT"),
        Need("column", "public", "things", "UPDATE", "a"),
        Need("column", "public", "things", "UPDATE", "b"),
        Need("tables", "own", "*", "SELECT"),
        Need("tables", "own", "*", "DELETE", excluded=("ledger",)),  # the REVOKE after it
    )
    # publish_event's own INSERT is checked by calling it, not column by column.
    assert optional == (
        Need("table", "public", "extra", "SELECT"),
        Need("table", "public", "extra", "INSERT"),
        Need("function", "public", "publish_event", "EXECUTE", args=("text", "uuid")),
    )


@pytest.mark.parametrize(
    "grant",
    [
        "GRANT SELECT ON SEQUENCE own.counter TO dispatcher;",
        "GRANT SELECT ON events TO dispatcher;",  # not schema-qualified
        "GRANT SELECT ON ALL SEQUENCES IN SCHEMA own TO dispatcher;",
    ],
)
def test_a_grant_it_cannot_read_is_an_error_not_a_gap(grant: str) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        needs_from_script(SCRIPT + grant)


def test_the_shipped_script_is_what_the_daemon_checks() -> None:
    text = resources.files("dispatcher").joinpath("sql/least_privilege.sql").read_text("utf-8")
    assert needs_from_script(text) == (CORE, INTEGRATIONS)
    assert Need("column", "public", "webhooks", "UPDATE", "status") in CORE
    assert Need("table", "public", "integrations", "SELECT") in INTEGRATIONS
    # Row-level security is checked on every host table the daemon reads.
    assert "public.webhooks" in READ_TABLES and "public.integrations" in READ_TABLES
    assert not any(t.startswith("dispatcher.") for t in READ_TABLES)
