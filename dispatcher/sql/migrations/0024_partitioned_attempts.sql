-- 0024: dispatcher.attempts partitioned by day (issue 14 item 5; docs/scaling.md).
--
-- The attempt history is the daemon's only append-only history table (the outbox is a queue,
-- emptied as it is fanned out; webhook_deliveries is the host's). Partitioned by range of
-- attempted_at, one partition per UTC day (attempts_pYYYYMMDD), plus a DEFAULT partition that
-- catches rows of a day whose partition does not exist yet, so an insert never fails.
-- Retention drops whole partitions once their day is past the retention window: no DELETE,
-- no dead rows, no vacuum, a few hundred bytes of WAL whatever the row count. Rows in the
-- DEFAULT partition are moved into their day's partition when it is created, or purged row by
-- row when they are old.
--
-- Existing history is copied in this migration (one INSERT ... SELECT; run retention first
-- on a very large table to shorten it). Identity column as before; the primary key includes
-- the partition key, as PostgreSQL requires.
ALTER TABLE dispatcher.attempts RENAME TO attempts_unpartitioned;
ALTER INDEX dispatcher.attempts_pkey RENAME TO attempts_unpartitioned_pkey;
ALTER INDEX dispatcher.attempts_delivery RENAME TO attempts_unpartitioned_delivery;
ALTER INDEX dispatcher.attempts_attempted_at RENAME TO attempts_unpartitioned_attempted_at;

CREATE TABLE dispatcher.attempts (
    id bigint GENERATED ALWAYS AS IDENTITY,
    delivery_id uuid NOT NULL,
    org_id uuid NOT NULL,
    webhook_id uuid NOT NULL,
    attempt_number integer NOT NULL,
    outcome text NOT NULL,
    response_status integer,
    duration_ms integer,
    error_message text,
    attempted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, attempted_at)
) PARTITION BY RANGE (attempted_at);
CREATE INDEX attempts_delivery ON dispatcher.attempts (delivery_id);
CREATE TABLE dispatcher.attempts_default PARTITION OF dispatcher.attempts DEFAULT;
-- Only the DEFAULT partition is ever purged by age row by row.
CREATE INDEX attempts_default_attempted_at ON dispatcher.attempts_default (attempted_at);

-- Create the day partitions of [p_from, p_from + p_days) that do not exist (UTC days),
-- moving any rows of those days out of the DEFAULT partition first. Returns how many were
-- created. SECURITY DEFINER: the daemon's least-privilege role calls it from retention and
-- cannot create tables itself.
CREATE FUNCTION dispatcher.ensure_attempt_partitions_v1(p_from date, p_days integer)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d date;
    lo timestamptz;
    hi timestamptz;
    part text;
    created integer := 0;
BEGIN
    FOR i IN 0 .. greatest(p_days, 0) - 1 LOOP
        d := p_from + i;
        part := 'attempts_p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass('dispatcher.' || part) IS NOT NULL;
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE dispatcher.%I (LIKE dispatcher.attempts INCLUDING DEFAULTS)',
                       part);
        EXECUTE format(
            'WITH moved AS (DELETE FROM dispatcher.attempts_default '
            'WHERE attempted_at >= %L AND attempted_at < %L RETURNING *) '
            'INSERT INTO dispatcher.%I SELECT * FROM moved', lo, hi, part);
        EXECUTE format(
            'ALTER TABLE dispatcher.attempts ATTACH PARTITION dispatcher.%I '
            'FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;
REVOKE ALL ON FUNCTION dispatcher.ensure_attempt_partitions_v1(date, integer) FROM PUBLIC;

-- Drop the day partitions that end at or before now() - p_days days: (partitions dropped,
-- rows they held by the planner's estimate). A partition whose lock cannot be had within
-- lock_timeout (set by the caller) is left for the next pass.
CREATE FUNCTION dispatcher.drop_attempt_partitions_v1(p_days integer)
RETURNS TABLE (dropped integer, rows_estimate bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    dropped := 0;
    rows_estimate := 0;
    FOR r IN
        SELECT c.relname, greatest(c.reltuples, 0)::bigint AS n
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'dispatcher.attempts'::regclass
          AND c.relname ~ '^attempts_p[0-9]{8}$'
          AND ((to_date(substr(c.relname, 11), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC')
              <= now() - make_interval(days => p_days)
        ORDER BY c.relname
    LOOP
        BEGIN
            EXECUTE format('DROP TABLE dispatcher.%I', r.relname);
            dropped := dropped + 1;
            rows_estimate := rows_estimate + r.n;
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- busy: the next pass drops it
        END;
    END LOOP;
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION dispatcher.drop_attempt_partitions_v1(integer) FROM PUBLIC;

-- Partitions for the days the existing history covers and the week ahead, then the copy.
SELECT dispatcher.ensure_attempt_partitions_v1(d0, (today + 8) - d0)
FROM (SELECT today,
             least(coalesce((SELECT min(attempted_at AT TIME ZONE 'UTC')::date
                             FROM dispatcher.attempts_unpartitioned), today), today - 1) AS d0
      FROM (SELECT (now() AT TIME ZONE 'UTC')::date AS today) t) s;
INSERT INTO dispatcher.attempts (id, delivery_id, org_id, webhook_id, attempt_number, outcome,
                                 response_status, duration_ms, error_message, attempted_at)
OVERRIDING SYSTEM VALUE
SELECT id, delivery_id, org_id, webhook_id, attempt_number, outcome, response_status,
       duration_ms, error_message, attempted_at
FROM dispatcher.attempts_unpartitioned;
SELECT setval(pg_get_serial_sequence('dispatcher.attempts', 'id'),
              coalesce((SELECT max(id) FROM dispatcher.attempts_unpartitioned), 0) + 1, false);
DROP TABLE dispatcher.attempts_unpartitioned;
