-- 0014: nothing leaves the outbox unread, and one poison event cannot stall the rest
-- (issue 10, items 5 and 7).
--
-- Unreadable events. fan_out used to delete every outbox row it took, then join the
-- events: an event the daemon's role could not read (row-level security enabled on a
-- running system, a policy that hides it) vanished with no delivery and no log line.
-- Now a row leaves the outbox only when its event was read; the others stay, are
-- counted in `misses` and are not taken again before `retry_at` (backing off up to 5
-- minutes), and the daemon reports them (log line `events_unreadable`, metric
-- dispatcher_outbox_unreadable, /readyz degraded). Both columns are null for a new
-- row: the intake triggers do not change and pay nothing for them.
ALTER TABLE dispatcher.outbox
    ADD COLUMN misses integer,
    ADD COLUMN retry_at timestamptz;

-- Quarantine. A fan-out that exceeds statement_timeout is retried with smaller and
-- smaller batches, down to one event; an event that still cannot be fanned out alone
-- is moved here (out of the outbox) so that every event behind it flows. Operators
-- see them with `dispatcher quarantine list` (or this table) and put them back with
-- `dispatcher quarantine retry` / dispatcher.retry_quarantined() (docs/operations.md).
CREATE TABLE dispatcher.quarantine (
    event_id uuid PRIMARY KEY,
    reason text NOT NULL,
    error text,
    times integer NOT NULL DEFAULT 1,  -- how often it was quarantined (retries included)
    first_queued_at timestamptz NOT NULL,  -- when its outbox row was written
    quarantined_at timestamptz NOT NULL DEFAULT now()
);

-- Put quarantined events back in the outbox (all when p_event_ids is null); the
-- next fan-out takes them again. Returns how many were put back.
CREATE FUNCTION dispatcher.retry_quarantined(p_event_ids uuid[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
BEGIN
    WITH back AS (
        DELETE FROM dispatcher.quarantine q
        WHERE p_event_ids IS NULL OR q.event_id = ANY (p_event_ids)
        RETURNING q.event_id
    )
    INSERT INTO dispatcher.outbox (event_id) SELECT event_id FROM back;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM pg_notify('dispatcher_v1', 'o');
    END IF;
    RETURN n;
END
$$;
