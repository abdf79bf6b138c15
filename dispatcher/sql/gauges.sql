-- Figures for /metrics beyond the `gauges` block (queries.sql), read every 10 s by the
-- supervisor's gauges loop (dispatcher/app.py). Cluster-wide: every replica reports the same.

-- name: outbox_age
-- Age of the oldest event not yet fanned out: the part of the commit-to-delivery latency
-- spent before a delivery exists (index outbox_oldest).
SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_seconds
FROM dispatcher.outbox;

-- name: integration_gauges
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

-- name: lifecycle_gauges
-- Lifecycle events (0026_lifecycle_events.sql) the host's publish_event refused, ever, by
-- event type (the changes they announce were committed), and those held back by the rate
-- limit since the last one published. One row per webhook and type: a small table.
SELECT event_type, sum(not_published)::bigint AS not_published,
       sum(suppressed)::bigint AS suppressed
FROM dispatcher.lifecycle_limits
GROUP BY event_type;
