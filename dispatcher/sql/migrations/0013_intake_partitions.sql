-- 0013: intake on a partitioned public.events (issue 10, item 6).
--
-- The statement trigger of 0002 fires only for the table it is defined on: on a
-- partitioned parent it sees rows inserted through the parent, never rows the host
-- inserts directly into a partition (`INSERT INTO events_2026_01 ...`), and those
-- events never reached the outbox. A ROW trigger on a partitioned table is cloned by
-- PostgreSQL to every partition, present and future (CREATE TABLE ... PARTITION OF
-- and ALTER TABLE ... ATTACH PARTITION alike), so when public.events is partitioned
-- the statement trigger is replaced by a row trigger. A table that is not
-- partitioned keeps the statement trigger: one INSERT per statement is cheaper on
-- the host's hot path (docs/performance.md).
--
-- Like intake_events_v1 (0010), the function is SECURITY DEFINER without a pinned
-- search_path: nothing in it is looked up through the search_path (the outbox and
-- pg_notify are schema-qualified, NEW is the trigger's record).
CREATE FUNCTION dispatcher.intake_event_row_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
AS $$
BEGIN
    INSERT INTO dispatcher.outbox (event_id) VALUES (NEW.id);
    PERFORM pg_catalog.pg_notify('dispatcher_v1', 'o');
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION dispatcher.intake_event_row_v1() FROM PUBLIC;

-- Installs the intake trigger that fits public.events as it is now, and drops the
-- other: the statement trigger for a plain table, the row trigger for a partitioned
-- one. Called below, and again by the table's owner if the host replaces `events`
-- (the daemon refuses to start when the trigger is missing or does not fit, and says
-- so). Returns which trigger is installed.
CREATE FUNCTION dispatcher.install_intake() RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (SELECT c.relkind FROM pg_catalog.pg_class c
        WHERE c.oid = 'public.events'::regclass) = 'p' THEN
        DROP TRIGGER IF EXISTS dispatcher_intake ON public.events;
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                       WHERE t.tgrelid = 'public.events'::regclass
                         AND t.tgname = 'dispatcher_intake_row') THEN
            CREATE TRIGGER dispatcher_intake_row
                AFTER INSERT ON public.events
                FOR EACH ROW EXECUTE FUNCTION dispatcher.intake_event_row_v1();
        END IF;
        RETURN 'dispatcher_intake_row';
    END IF;
    DROP TRIGGER IF EXISTS dispatcher_intake_row ON public.events;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                   WHERE t.tgrelid = 'public.events'::regclass
                     AND t.tgname = 'dispatcher_intake') THEN
        CREATE TRIGGER dispatcher_intake
            AFTER INSERT ON public.events
            REFERENCING NEW TABLE AS new_events
            FOR EACH STATEMENT EXECUTE FUNCTION dispatcher.intake_events_v1();
    END IF;
    RETURN 'dispatcher_intake';
END
$$;
REVOKE ALL ON FUNCTION dispatcher.install_intake() FROM PUBLIC;

SELECT dispatcher.install_intake();
