-- Figures for /metrics, read every 10 s by the supervisor's gauges loop
-- (dispatcher/app.py). Cluster-wide: every replica reports the same.

-- name: gauges_queue
-- Cheap figures for /metrics: every count here is served by a partial index or
-- a small table.
SELECT
    (SELECT count(*) FROM public.webhook_deliveries
      WHERE status IN ('pending', 'retrying')
        AND coalesce(next_retry_at, created_at) <= now()) AS due,
    (SELECT extract(epoch FROM now() - min(coalesce(next_retry_at, created_at)))
       FROM public.webhook_deliveries
      WHERE status IN ('pending', 'retrying')
        AND coalesce(next_retry_at, created_at) <= now()) AS oldest_due_seconds,
    (SELECT count(*) FROM public.webhook_deliveries WHERE status = 'pending') AS pending,
    (SELECT count(*) FROM public.webhook_deliveries WHERE status = 'retrying') AS retrying,
    (SELECT count(*) FROM public.webhook_deliveries WHERE status = 'dlq') AS dlq,
    (SELECT count(*) FROM dispatcher.outbox) AS outbox,
    (SELECT count(*) FROM public.webhooks
      WHERE status = 'disabled' AND deleted_at IS NULL) AS webhooks_disabled,
    -- an index-only count of the hold's primary key
    (SELECT count(*) FROM dispatcher.held) AS held;

-- name: gauges_outbox_age
-- Age of the oldest event not yet fanned out: the part of the commit-to-delivery latency
-- spent before a delivery exists (index outbox_oldest).
SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_seconds
FROM dispatcher.outbox;

-- name: gauges_integrations
-- Integrations by health and OAuth tokens whose refresh is failing. Only read when
-- integrations are enabled (the role may have no grant on these tables otherwise).
SELECT
    (SELECT count(*) FROM public.integrations
      WHERE status = 'active' AND deleted_at IS NULL AND health_status = 'healthy') AS healthy,
    (SELECT count(*) FROM public.integrations
      WHERE status = 'active' AND deleted_at IS NULL AND health_status = 'degraded') AS degraded,
    (SELECT count(*) FROM public.integrations
      WHERE status = 'active' AND deleted_at IS NULL AND health_status = 'unhealthy')
        AS unhealthy,
    (SELECT count(*) FROM public.integrations
      WHERE status = 'active' AND deleted_at IS NULL
        AND coalesce(health_status, 'unknown') = 'unknown') AS unknown,
    (SELECT count(*) FROM public.integrations
      WHERE status = 'error' AND deleted_at IS NULL) AS in_error,
    (SELECT count(*) FROM public.integration_oauth_tokens t
       JOIN dispatcher.oauth_refresh_state r ON r.token_id = t.id
      WHERE t.status = 'active' AND (r.attempts > 0 OR r.last_error_kind = 'rejected'))
        AS tokens_failing,
    (SELECT count(*) FROM public.integration_oauth_tokens t
       JOIN public.integrations i ON i.id = t.integration_id
      WHERE t.status = 'expired' AND i.deleted_at IS NULL) AS tokens_expired;

-- name: gauges_webhook_health_top
-- Per-webhook health for /metrics, bounded: the %(top)s webhooks with the largest
-- due backlog (then held events, then in flight). The ranking reads the queue (the
-- pending/retrying rows) and the hold, never the history; the health columns are
-- then computed for those webhooks only (0028_webhook_health.sql).
WITH queue AS (
    SELECT d.webhook_id,
           count(*) FILTER (WHERE coalesce(d.next_retry_at, d.created_at) <= now()) AS due,
           count(*) FILTER (WHERE d.next_retry_at > now()) AS later
    FROM public.webhook_deliveries d
    WHERE d.status IN ('pending', 'retrying')
    GROUP BY d.webhook_id
), held AS (
    SELECT h.webhook_id, count(*) AS held FROM dispatcher.held h GROUP BY h.webhook_id
), top AS (
    SELECT w.id
    FROM public.webhooks w
    LEFT JOIN queue q ON q.webhook_id = w.id
    LEFT JOIN held h ON h.webhook_id = w.id
    WHERE w.deleted_at IS NULL
    ORDER BY coalesce(q.due, 0) DESC, coalesce(h.held, 0) DESC, coalesce(q.later, 0) DESC, w.id
    LIMIT %(top)s
)
SELECT h.webhook_id, h.org_id, h.status, h.consecutive_failures,
       h.attempts_1h, h.attempts_24h, h.success_rate_1h, h.success_rate_24h,
       h.p50_ms_1h, h.p95_ms_1h, h.p50_ms_24h, h.p95_ms_24h,
       h.in_flight, h.retry_waiting, h.due, h.held,
       extract(epoch FROM h.disabled_since)::float8 AS disabled_since
FROM dispatcher.webhook_health h
WHERE h.webhook_id = ANY (ARRAY(SELECT id FROM top))
ORDER BY h.due DESC, h.webhook_id;

-- name: gauges_lifecycle
-- Lifecycle events (0026_lifecycle_events.sql) the host's publish_event refused, ever, by
-- event type (the changes they announce were committed), and those held back by the rate
-- limit since the last one published. One row per webhook and type: a small table.
SELECT event_type, sum(not_published)::bigint AS not_published,
       sum(suppressed)::bigint AS suppressed
FROM dispatcher.lifecycle_limits
GROUP BY event_type;
