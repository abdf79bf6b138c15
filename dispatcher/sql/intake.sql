-- Intake: the intake trigger's health and what is done with an event that cannot be
-- fanned out (dispatcher/intake.py, app.py).

-- name: intake_outbox_next
-- The event delivery_fan_out would take next (when shrinking a batch down to one event).
SELECT o.event_id
FROM dispatcher.outbox o
WHERE o.retry_at IS NULL OR o.retry_at <= now()
ORDER BY o.created_at LIMIT 1;

-- name: intake_quarantine_event
-- Move one event that cannot be fanned out even alone (it exceeds statement_timeout)
-- from the outbox to dispatcher.quarantine, so that the events behind it flow.
-- Nothing is quarantined when its outbox row is gone (another replica took it).
-- Returns the event's organization and type when it can be read.
WITH gone AS (
    DELETE FROM dispatcher.outbox o
    WHERE o.event_id = %(event_id)s
    RETURNING o.event_id, o.created_at
), kept AS (
    INSERT INTO dispatcher.quarantine AS q (event_id, reason, error, first_queued_at)
    SELECT event_id, %(reason)s, %(error)s, min(created_at) FROM gone GROUP BY event_id
    ON CONFLICT (event_id) DO UPDATE
        SET times = q.times + 1, reason = excluded.reason, error = excluded.error,
            quarantined_at = now()
    RETURNING q.event_id
)
SELECT k.event_id, e.org_id, e.event_type
FROM kept k LEFT JOIN public.events e ON e.id = k.event_id;

-- name: intake_health
-- Events stuck before fan-out, for /metrics and /readyz: outbox rows whose event
-- this role could not read, and quarantined events.
SELECT
    (SELECT count(*) FROM dispatcher.outbox WHERE misses IS NOT NULL) AS unreadable,
    (SELECT count(*) FROM dispatcher.quarantine) AS quarantined;

-- name: intake_trigger
-- Which intake trigger public.events has, and which it needs (install_intake, 0013).
SELECT c.relkind = 'p' AS partitioned,
       EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
               WHERE t.tgrelid = c.oid AND t.tgname = 'dispatcher_intake'
                 AND t.tgenabled <> 'D') AS statement_trigger,
       EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
               WHERE t.tgrelid = c.oid AND t.tgname = 'dispatcher_intake_row'
                 AND t.tgenabled <> 'D') AS row_trigger
FROM pg_catalog.pg_class c
WHERE c.oid = 'public.events'::regclass;
