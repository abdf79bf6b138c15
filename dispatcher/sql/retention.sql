-- Retention: small batches, SKIP LOCKED, so a purge never holds long locks nor
-- waits on rows another transaction is writing.

-- name: purge_dlq
-- DLQ rows older than their org's dlq_retention_days (dispatcher.retry_policy_v1, 0037).
WITH doomed AS (
    SELECT d.id
    FROM public.webhook_deliveries d
    LEFT JOIN public.integration_retry_config rc ON rc.org_id = d.org_id
    WHERE d.status = 'dlq'
      AND coalesce(d.delivered_at, d.created_at) < now() - make_interval(days => (
              dispatcher.retry_policy_v1(dlq_retention_days => rc.dlq_retention_days)
          ).dlq_retention_days)
    LIMIT %(batch)s
    FOR UPDATE OF d SKIP LOCKED
)
DELETE FROM public.webhook_deliveries d USING doomed WHERE d.id = doomed.id;

-- name: purge_held
-- Events held for a disabled webhook that are older than its org's
-- dlq_retention_days: a release would drop them anyway (0020_hold.sql).
WITH doomed AS (
    SELECT h.webhook_id, h.event_id
    FROM dispatcher.held h
    LEFT JOIN public.integration_retry_config rc ON rc.org_id = h.org_id
    WHERE h.event_created_at < now() - make_interval(days => (
              dispatcher.retry_policy_v1(dlq_retention_days => rc.dlq_retention_days)
          ).dlq_retention_days)
    LIMIT %(batch)s
    FOR UPDATE OF h SKIP LOCKED
)
DELETE FROM dispatcher.held h USING doomed
WHERE h.webhook_id = doomed.webhook_id AND h.event_id = doomed.event_id;

-- name: purge_finished
-- success and failed deliveries older than the configured retention. `failed` rows also
-- include the host's cleared DLQ items (its UI turns a DLQ row to `failed` "instead of
-- deleting, for audit"): they are kept at least as long as their org's dlq_retention_days
-- (dispatcher.retry_policy_v1, 0037), counted like DLQ rows from their final failure
-- (delivered_at).
WITH doomed AS (
    SELECT d.id
    FROM public.webhook_deliveries d
    LEFT JOIN public.integration_retry_config rc ON rc.org_id = d.org_id
    WHERE d.status IN ('success', 'failed')
      AND d.created_at < now() - make_interval(days => %(days)s)
      AND (d.status = 'success'
           OR coalesce(d.delivered_at, d.created_at) < now() - make_interval(days => (
                  dispatcher.retry_policy_v1(dlq_retention_days => rc.dlq_retention_days)
              ).dlq_retention_days))
    ORDER BY d.created_at
    LIMIT %(batch)s
    FOR UPDATE OF d SKIP LOCKED
)
-- their sequence numbers go through the AFTER DELETE trigger (0033), partitioned or not
DELETE FROM public.webhook_deliveries d USING doomed WHERE d.id = doomed.id;

-- name: purge_orphan_numbers
-- Sequence numbers (0032) whose delivery is gone without its triggers firing (a partition
-- dropped or truncated on its own, a delete under session_replication_role = replica,
-- TRUNCATE ONLY of a table with inheritance children: 0039). Examines the next %(batch)s
-- numbers after %(after)s in delivery_id order, one index probe each, and deletes those
-- with no delivery; returns where it stopped, so a pass goes on from there (retention.py).
-- A delivery and its number are committed by one transaction, so no snapshot sees a new
-- number without its delivery. webhook_deliveries is read as the daemon's role: a row
-- row-level security hid from it would look gone and its live number would be deleted, so
-- retention.py runs this after retention_row_security_off, where PostgreSQL raises instead
-- of filtering (a role that lost BYPASSRLS, a policy that hides rows; preflight only checks
-- at start). A partition detached from webhook_deliveries is no longer its: its numbers go too.
WITH examined AS MATERIALIZED (
    SELECT s.delivery_id
    FROM dispatcher.delivery_sequence s
    WHERE s.delivery_id > %(after)s
    ORDER BY s.delivery_id
    LIMIT %(batch)s
), doomed AS (
    SELECT s.delivery_id
    FROM dispatcher.delivery_sequence s
    JOIN examined e ON e.delivery_id = s.delivery_id
    WHERE NOT EXISTS (SELECT 1 FROM public.webhook_deliveries d WHERE d.id = s.delivery_id)
    FOR UPDATE OF s SKIP LOCKED
), gone AS (
    DELETE FROM dispatcher.delivery_sequence s USING doomed
    WHERE s.delivery_id = doomed.delivery_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM examined) AS examined,
       (SELECT e.delivery_id FROM examined e ORDER BY e.delivery_id DESC LIMIT 1) AS last,
       (SELECT count(*) FROM gone) AS purged;

-- name: retention_row_security_off
-- Before purge_orphan_numbers, in its transaction: a query that row-level security would
-- filter raises ("query would be affected by row-level security policy") instead of
-- seeing fewer rows. Superusers, BYPASSRLS roles and table owners are not affected.
SET LOCAL row_security = off;

-- name: purge_attempts
-- Old rows of the DEFAULT partition only (0024): the day partitions are dropped whole.
WITH doomed AS (
    SELECT id FROM dispatcher.attempts_default
    WHERE attempted_at < now() - make_interval(days => %(days)s)
    ORDER BY attempted_at
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM dispatcher.attempts_default a USING doomed WHERE a.id = doomed.id;

-- name: attempt_partitions_ensure
-- Day partitions from yesterday to a week ahead (UTC), created when missing.
SELECT dispatcher.ensure_attempt_partitions_v1((now() AT TIME ZONE 'UTC')::date - 1, 9)
       AS created;

-- name: attempt_partitions_drop
-- Day partitions past the retention window, dropped whole.
SELECT dropped, rows_estimate FROM dispatcher.drop_attempt_partitions_v1(%(days)s);

-- name: retention_lock_timeout
-- Creating or dropping a partition locks dispatcher.attempts: never queue behind a long
-- statement (and make every insert queue behind us); give up and try on the next pass.
SET LOCAL lock_timeout = '2s';

-- name: retention_lock
-- One replica purges at a time; the lock is released when the session ends.
SELECT pg_try_advisory_lock(%(key)s) AS locked;

-- name: retention_unlock
SELECT pg_advisory_unlock(%(key)s) AS unlocked;
