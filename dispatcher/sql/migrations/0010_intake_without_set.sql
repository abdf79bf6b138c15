-- 0010: the intake trigger function without a function-level SET search_path.
-- A SET clause saves and restores the setting on every call, inside every
-- publisher's transaction: measured with pgbench (8 publishers, 6 alternating
-- rounds), publish_event() kept 0.835 of its throughput without the trigger
-- with the SET and 0.862 without it (docs/performance.md).
--
-- Still safe as SECURITY DEFINER without a pinned search_path, because nothing in
-- it is looked up through the search_path: the outbox and pg_notify are
-- schema-qualified, no operator or unqualified function is used, and the
-- transition table `new_events` resolves before any schema (a temporary table of
-- that name does not divert it: tests/integration/test_migrations.py).
CREATE OR REPLACE FUNCTION dispatcher.intake_events_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
BEGIN
    INSERT INTO dispatcher.outbox (event_id) SELECT id FROM new_events;
    PERFORM pg_catalog.pg_notify('dispatcher_v1', 'o');
    RETURN NULL;
END
$$;
