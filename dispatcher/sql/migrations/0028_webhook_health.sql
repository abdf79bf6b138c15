-- 0028: endpoint health at a glance (docs/operations.md, "Endpoint health").
--
-- Per webhook: attempts and success rate over the last hour and day, p50/p95
-- response time, the last error and when, rows in flight, the due backlog, held
-- events, and since when it is disabled. Read through the view
-- dispatcher.webhook_health (operators) or the org-scoped function
-- dispatcher.webhook_health(p_org_id, p_webhook_id) (the host's admin code).
--
-- Where attempts live: dispatcher.attempts keeps every attempt of a delivery that
-- did not succeed at its first try (record_outcomes); a first-try success is only
-- its webhook_deliveries row (status 'success', attempt_number 1, delivered_at,
-- duration_ms). The two never describe the same attempt, so their union is every
-- attempt made to the endpoint. Both are read through an index on (webhook_id,
-- time) bounded to the last day: the cost follows the recent attempts, never the
-- history. The time filter is on attempted_at, so a dispatcher.attempts partitioned
-- by time prunes to the last day's partitions.

-- Recent attempts of one webhook. On a large attempts table, create it CONCURRENTLY
-- beforehand under the same name (IF NOT EXISTS skips it then).
CREATE INDEX IF NOT EXISTS attempts_webhook_recent
    ON dispatcher.attempts (webhook_id, attempted_at) INCLUDE (outcome, duration_ms);

-- First-try successes of one webhook, by when they were delivered. A partial index
-- on the host's table (docs/host-contract.md): only success rows at attempt 1 enter
-- it, once, when their outcome is written (that UPDATE changes status, already in
-- other partial indexes' predicates, so it was never a HOT update). On a large
-- existing webhook_deliveries table, create it without blocking writes first:
--   CREATE INDEX CONCURRENTLY dispatcher_deliveries_first_success
--       ON public.webhook_deliveries (webhook_id, delivered_at) INCLUDE (duration_ms)
--       WHERE status = 'success' AND attempt_number = 1;
CREATE INDEX IF NOT EXISTS dispatcher_deliveries_first_success
    ON public.webhook_deliveries (webhook_id, delivered_at) INCLUDE (duration_ms)
    WHERE status = 'success' AND attempt_number = 1;

-- When each webhook's status last changed (the host keeps no such column:
-- updated_at moves on every counter write). Written by the trigger below, whoever
-- changes the status (the host's auto-disable trigger, a 410, a person, the CLI).
CREATE TABLE dispatcher.webhook_status_since (
    webhook_id uuid PRIMARY KEY REFERENCES public.webhooks (id) ON DELETE CASCADE,
    status text NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);

-- SECURITY DEFINER: the host's roles need no rights on our schema.
CREATE FUNCTION dispatcher.webhook_status_since_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO dispatcher.webhook_status_since AS s (webhook_id, status, since)
    VALUES (NEW.id, NEW.status, now())
    ON CONFLICT (webhook_id) DO UPDATE SET status = excluded.status, since = excluded.since;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION dispatcher.webhook_status_since_v1() FROM PUBLIC;

-- Not `UPDATE OF status`: the host's auto-disable trigger sets status in a BEFORE
-- trigger of an UPDATE that names only consecutive_failures, and a column trigger
-- would miss it.
CREATE TRIGGER dispatcher_webhook_status_since
    AFTER UPDATE ON public.webhooks
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION dispatcher.webhook_status_since_v1();

-- The view. One row per webhook that is not soft-deleted.
--   attempts_1h/24h, successes_1h/24h, success_rate_1h/24h (0-1, 4 decimals; NULL
--     without attempts)
--   p50_ms_1h/24h, p95_ms_1h/24h: response time of the attempts with a duration
--     (timeouts included, at their duration), percentile_disc: a measured value
--   last_error, last_error_status, last_error_at: its latest failed attempt
--     (dispatcher.attempts; one index probe backwards: every success kept there
--     follows a failure)
--   in_flight: first attempts being sent (pending rows under a lease)
--   retry_waiting: retrying rows whose next_retry_at is ahead: waiting for their
--     retry, or being retried (the row does not tell a lease from a retry time)
--   due, oldest_due_at: the backlog, what claim_due would take now
--   held, oldest_held_at: events held while disabled (dispatcher.held)
--   disabled_since: when it became disabled (NULL unless disabled)
-- The queue figures come from one pass over the pending/retrying rows (the partial
-- index dispatcher_deliveries_due_since): the queue, not the history.
DO $do$
BEGIN
    EXECUTE format($view$
CREATE VIEW dispatcher.webhook_health %s AS
SELECT w.id AS webhook_id, w.org_id, w.name, w.status,
       coalesce(w.consecutive_failures, 0) AS consecutive_failures,
       r.attempts_1h, r.successes_1h,
       round(r.successes_1h::numeric / nullif(r.attempts_1h, 0), 4)::float8 AS success_rate_1h,
       r.attempts_24h, r.successes_24h,
       round(r.successes_24h::numeric / nullif(r.attempts_24h, 0), 4)::float8 AS success_rate_24h,
       r.p50_ms_1h, r.p95_ms_1h, r.p50_ms_24h, r.p95_ms_24h,
       le.last_error, le.last_error_status, le.last_error_at,
       coalesce(q.in_flight, 0) AS in_flight,
       coalesce(q.retry_waiting, 0) AS retry_waiting,
       coalesce(q.due, 0) AS due,
       q.oldest_due_at,
       hd.held, hd.oldest_held_at,
       CASE WHEN w.status = 'disabled'
            THEN CASE WHEN ss.status = 'disabled' THEN ss.since
                      ELSE coalesce(w.last_failure_at, w.updated_at) END
       END AS disabled_since,
       w.last_success_at, w.last_failure_at
FROM public.webhooks w
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE x.at >= now() - interval '1 hour') AS attempts_1h,
           count(*) FILTER (WHERE x.ok AND x.at >= now() - interval '1 hour') AS successes_1h,
           count(*) AS attempts_24h,
           count(*) FILTER (WHERE x.ok) AS successes_24h,
           percentile_disc(0.5) WITHIN GROUP (ORDER BY x.ms)
               FILTER (WHERE x.at >= now() - interval '1 hour') AS p50_ms_1h,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY x.ms)
               FILTER (WHERE x.at >= now() - interval '1 hour') AS p95_ms_1h,
           percentile_disc(0.5) WITHIN GROUP (ORDER BY x.ms) AS p50_ms_24h,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY x.ms) AS p95_ms_24h
    FROM (SELECT a.attempted_at AS at, a.outcome = 'delivered' AS ok, a.duration_ms AS ms
          FROM dispatcher.attempts a
          WHERE a.webhook_id = w.id AND a.attempted_at >= now() - interval '1 day'
          UNION ALL
          SELECT d.delivered_at, true, d.duration_ms
          FROM public.webhook_deliveries d
          WHERE d.webhook_id = w.id AND d.status = 'success' AND d.attempt_number = 1
            AND d.delivered_at >= now() - interval '1 day') x
) r
LEFT JOIN LATERAL (
    SELECT coalesce(a.error_message, 'HTTP ' || a.response_status) AS last_error,
           a.response_status AS last_error_status, a.attempted_at AS last_error_at
    FROM dispatcher.attempts a
    WHERE a.webhook_id = w.id AND a.outcome <> 'delivered'
    ORDER BY a.attempted_at DESC
    LIMIT 1
) le ON true
LEFT JOIN (
    SELECT d.webhook_id,
           count(*) FILTER (WHERE d.status = 'pending' AND d.next_retry_at > now())
               AS in_flight,
           count(*) FILTER (WHERE d.status = 'retrying' AND d.next_retry_at > now())
               AS retry_waiting,
           count(*) FILTER (WHERE coalesce(d.next_retry_at, d.created_at) <= now()) AS due,
           min(coalesce(d.next_retry_at, d.created_at))
               FILTER (WHERE coalesce(d.next_retry_at, d.created_at) <= now()) AS oldest_due_at
    FROM public.webhook_deliveries d
    WHERE d.status IN ('pending', 'retrying')
    GROUP BY d.webhook_id
) q ON q.webhook_id = w.id
CROSS JOIN LATERAL (
    SELECT count(*) AS held, min(h.event_created_at) AS oldest_held_at
    FROM dispatcher.held h WHERE h.webhook_id = w.id
) hd
LEFT JOIN dispatcher.webhook_status_since ss ON ss.webhook_id = w.id
WHERE w.deleted_at IS NULL
$view$,
        CASE WHEN current_setting('server_version_num')::integer >= 150000
             THEN 'WITH (security_invoker = true)' ELSE '' END);
END
$do$;

-- The SQL admin API's form (docs/admin-api.md): the organization's webhooks, or one
-- of them (refused when it belongs to another organization).
CREATE FUNCTION dispatcher.webhook_health(p_org_id uuid, p_webhook_id uuid DEFAULT NULL)
RETURNS SETOF dispatcher.webhook_health
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_webhook_id IS NULL THEN
        PERFORM dispatcher.require_org(p_org_id);
        RETURN QUERY SELECT * FROM dispatcher.webhook_health h
                     WHERE h.org_id = p_org_id ORDER BY h.name, h.webhook_id;
    ELSE
        PERFORM dispatcher.require_webhook(p_org_id, p_webhook_id);
        RETURN QUERY SELECT * FROM dispatcher.webhook_health h
                     WHERE h.webhook_id = p_webhook_id;
    END IF;
END
$$;
