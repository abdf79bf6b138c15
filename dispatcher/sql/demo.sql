-- Queries of `dispatcher demo` (dispatcher/demo/walkthrough.py). They write the host's
-- tables exactly as the host's admin UI and code do.

-- name: demo_create_org
INSERT INTO public.organizations (id, name, slug)
VALUES (%(org)s, %(name)s, %(slug)s);

-- name: demo_retry_config
INSERT INTO public.integration_retry_config
    (org_id, max_retries, retry_strategy, base_delay_seconds, max_delay_seconds,
     enable_jitter, enable_dlq)
VALUES (%(org)s, %(max_retries)s, 'exponential', %(base_delay)s, %(max_delay)s, false, true);

-- name: demo_create_webhook
INSERT INTO public.webhooks (org_id, name, url, secret, events)
VALUES (%(org)s, %(name)s, %(url)s, %(secret)s, %(events)s)
RETURNING id;

-- name: demo_publish
-- The host's publish_event(), 6-argument form.
SELECT public.publish_event(%(type)s, %(aggregate)s, %(payload)s::jsonb, NULL, '{}'::jsonb,
                            %(org)s) AS id;

-- name: demo_deliveries
-- The org's deliveries with the outcome of their last attempt.
SELECT d.id, d.status, coalesce(d.attempt_number, 1) AS attempt_number,
       coalesce(d.max_attempts, 3) AS max_attempts, d.response_status, d.duration_ms,
       d.error_message, d.event_type, w.name AS webhook_name,
       extract(epoch FROM d.next_retry_at - now()) AS retry_in
FROM public.webhook_deliveries d
JOIN public.webhooks w ON w.id = d.webhook_id
WHERE d.org_id = %(org)s
ORDER BY d.created_at, d.id;

-- name: demo_statuses
SELECT status, count(*) AS n FROM public.webhook_deliveries
WHERE org_id = %(org)s GROUP BY status;

-- name: demo_replay_dlq
-- The SQL admin API's DLQ retry (sql/migrations/0005_admin_api.sql): like the
-- host's retry button, the org's DLQ items go back to `pending`, attempt 1.
SELECT retried, skipped_inactive FROM dispatcher.retry_dlq(%(org)s);

-- name: demo_cleanup
-- On a database of the operator's own, remove what the demo created.
WITH hist AS (
    DELETE FROM dispatcher.attempts WHERE org_id = %(org)s
)
DELETE FROM public.organizations WHERE id = %(org)s;
