-- Named queries of the operator CLI (dispatcher/admin/api.py). Writes with rules go
-- through the SQL admin API of 0005_admin_api.sql; plain reads and writes are
-- here. Optional filters are NULL when not given.

-- name: admin_org_exists
SELECT EXISTS (SELECT 1 FROM public.organizations WHERE id = %(org)s) AS found;

-- name: admin_webhooks_list
SELECT w.id, w.org_id, w.name, w.url, w.events, w.status,
       coalesce(w.consecutive_failures, 0) AS consecutive_failures,
       w.last_success_at, w.last_failure_at, w.created_at
FROM public.webhooks w
WHERE w.deleted_at IS NULL
  AND (%(org)s::uuid IS NULL OR w.org_id = %(org)s)
  AND (%(status)s::text IS NULL OR w.status = %(status)s)
ORDER BY w.org_id, w.created_at, w.id;

-- name: admin_webhook_get
-- The secret itself is returned: the caller decides whether to show it.
SELECT w.id, w.org_id, w.name, w.description, w.url, w.events, w.headers, w.status,
       coalesce(w.consecutive_failures, 0) AS consecutive_failures,
       w.last_triggered_at, w.last_success_at, w.last_failure_at,
       w.created_at, w.updated_at, w.secret,
       ws.previous_expires_at, ws.rotated_at,
       (ws.previous_expires_at > now()) IS TRUE AS previous_secret_active
FROM public.webhooks w
LEFT JOIN dispatcher.webhook_secrets ws ON ws.webhook_id = w.id
WHERE w.id = %(id)s AND w.deleted_at IS NULL;

-- name: admin_webhook_insert
INSERT INTO public.webhooks (org_id, name, description, url, secret, events, headers, status)
VALUES (%(org)s, %(name)s, %(description)s, %(url)s, %(secret)s, %(events)s, %(headers)s,
        %(status)s)
RETURNING id;

-- name: admin_webhook_set_status
-- 'active' again resets consecutive_failures in the same UPDATE: the host's auto-disable
-- trigger never does (its router resets the count itself; docs/host-contract.md).
UPDATE public.webhooks
SET status = %(status)s::varchar,
    consecutive_failures = CASE WHEN %(status)s::varchar = 'active' THEN 0
                                ELSE consecutive_failures END,
    updated_at = now()
WHERE id = %(id)s AND deleted_at IS NULL
RETURNING id, status, coalesce(consecutive_failures, 0) AS consecutive_failures;

-- name: admin_webhook_hold
-- The hold of a webhook disabled automatically (0020_hold.sql): held events, the
-- streak rows a re-enable requeues, and how its last hold ended.
SELECT * FROM dispatcher.hold_status_v1(%(id)s);

-- name: admin_webhook_released_now
-- How this transaction's enable released the hold (the trigger's log row), if it did.
SELECT action, released, requeued, expired, discarded
FROM dispatcher.hold_log
WHERE webhook_id = %(id)s AND at = now()
ORDER BY id DESC LIMIT 1;

-- name: admin_discard_hold
SELECT dispatcher.discard_hold(%(org)s, %(id)s) AS discarded;

-- name: admin_rotate_secret
SELECT new_secret, previous_expires_at
FROM dispatcher.rotate_secret(%(org)s, %(id)s, %(grace)s);

-- name: admin_send_test
SELECT dispatcher.send_test(%(org)s, %(id)s) AS id;

-- name: admin_delivery_outcome
-- Whether a delivery's first attempt has happened, and how it went.
SELECT d.id, d.status, d.attempt_number, d.max_attempts, d.response_status,
       d.duration_ms, d.error_message, d.next_retry_at, d.request_url,
       (SELECT count(*) FROM dispatcher.attempts a WHERE a.delivery_id = d.id) AS attempts
FROM public.webhook_deliveries d
WHERE d.id = %(id)s;

-- name: admin_deliveries_list
SELECT d.id, d.org_id, d.webhook_id, d.webhook_name, d.event_type, d.event_id, d.status,
       d.attempt_number, d.max_attempts, d.response_status, d.error_message,
       d.next_retry_at, d.delivered_at, d.created_at
FROM dispatcher.deliveries_with_webhook d
WHERE (%(org)s::uuid IS NULL OR d.org_id = %(org)s)
  AND (%(webhook)s::uuid IS NULL OR d.webhook_id = %(webhook)s)
  AND (%(status)s::text IS NULL OR d.status = %(status)s)
  AND (%(since)s::timestamptz IS NULL OR d.created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR d.created_at < %(until)s)
ORDER BY d.created_at DESC, d.id
LIMIT %(limit)s;

-- name: admin_delivery_get
SELECT d.id, d.org_id, d.webhook_id, d.webhook_name, d.event_type, d.event_id, d.status,
       d.attempt_number, d.max_attempts, d.request_url, d.request_headers, d.request_body,
       d.response_status, d.response_headers, d.response_body, d.duration_ms,
       d.error_message, d.error_code, d.next_retry_at, d.delivered_at, d.created_at
FROM dispatcher.deliveries_with_webhook d
WHERE d.id = %(id)s;

-- name: admin_delivery_attempts
SELECT a.attempt_number, a.outcome, a.response_status, a.duration_ms, a.error_message,
       a.attempted_at
FROM dispatcher.attempts a
WHERE a.delivery_id = %(id)s
ORDER BY a.attempted_at, a.id;

-- name: admin_delivery_org
SELECT org_id FROM public.webhook_deliveries WHERE id = %(id)s;

-- name: admin_webhook_org
SELECT org_id FROM public.webhooks WHERE id = %(id)s AND deleted_at IS NULL;

-- name: admin_replay
SELECT dispatcher.replay_delivery(%(org)s, %(id)s) AS id;

-- name: admin_dlq_clear_org
SELECT dispatcher.clear_dlq(%(org)s, %(webhook)s, %(since)s, %(until)s) AS cleared;

-- name: admin_dlq_clear_all
SELECT coalesce(sum(dispatcher.clear_dlq(o.org_id, NULL, %(since)s, %(until)s)), 0)::integer
       AS cleared
FROM (
    SELECT DISTINCT d.org_id FROM public.webhook_deliveries d
    WHERE d.status = 'dlq'
      AND (%(since)s::timestamptz IS NULL OR d.created_at >= %(since)s)
      AND (%(until)s::timestamptz IS NULL OR d.created_at < %(until)s)
) o;

-- name: admin_recover
SELECT queued, dlq_superseded
FROM dispatcher.recover_webhook(%(org)s, %(webhook)s, %(since)s, %(until)s, %(dry_run)s);

-- name: admin_retry_config_get
SELECT org_id, max_retries, retry_strategy, base_delay_seconds, max_delay_seconds,
       enable_jitter, enable_dlq, dlq_retention_days, updated_at
FROM public.integration_retry_config
WHERE org_id = %(org)s;

-- name: admin_retry_config_set
-- Insert with the host's defaults (dispatcher.retry_policy_v1 with no arguments, 0037), or
-- change only the values given (NULL = keep).
INSERT INTO public.integration_retry_config AS rc (
    org_id, max_retries, retry_strategy, base_delay_seconds, max_delay_seconds,
    enable_jitter, enable_dlq, dlq_retention_days
)
SELECT %(org)s, coalesce(%(max_retries)s, d.max_retries),
       coalesce(%(retry_strategy)s, d.retry_strategy),
       coalesce(%(base_delay_seconds)s, d.base_delay_seconds),
       coalesce(%(max_delay_seconds)s, d.max_delay_seconds),
       coalesce(%(enable_jitter)s, d.enable_jitter), coalesce(%(enable_dlq)s, d.enable_dlq),
       coalesce(%(dlq_retention_days)s, d.dlq_retention_days)
FROM dispatcher.retry_policy_v1() d
ON CONFLICT (org_id) DO UPDATE SET
    max_retries = coalesce(%(max_retries)s, rc.max_retries),
    retry_strategy = coalesce(%(retry_strategy)s, rc.retry_strategy),
    base_delay_seconds = coalesce(%(base_delay_seconds)s, rc.base_delay_seconds),
    max_delay_seconds = coalesce(%(max_delay_seconds)s, rc.max_delay_seconds),
    enable_jitter = coalesce(%(enable_jitter)s, rc.enable_jitter),
    enable_dlq = coalesce(%(enable_dlq)s, rc.enable_dlq),
    dlq_retention_days = coalesce(%(dlq_retention_days)s, rc.dlq_retention_days),
    updated_at = now()
RETURNING org_id, max_retries, retry_strategy, base_delay_seconds, max_delay_seconds,
          enable_jitter, enable_dlq, dlq_retention_days, updated_at;

-- name: admin_stats_org
SELECT * FROM dispatcher.stats(%(org)s);

-- name: admin_stats_all
SELECT * FROM dispatcher.stats_all();

-- name: admin_dlq_count
-- How many DLQ items match the filters (progress of `dlq retry`).
SELECT count(*)::bigint AS n FROM public.webhook_deliveries d
WHERE d.status = 'dlq'
  AND (%(org)s::uuid IS NULL OR d.org_id = %(org)s)
  AND (%(webhook)s::uuid IS NULL OR d.webhook_id = %(webhook)s)
  AND (%(since)s::timestamptz IS NULL OR d.created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR d.created_at < %(until)s);

-- name: admin_dlq_batch
-- The next %(batch)s matching DLQ items after %(after)s, by id: `dlq retry` walks them in
-- batches, one transaction each. A retried item leaves the DLQ, so a second run after an
-- interruption finds only what is left.
SELECT d.id, d.org_id FROM public.webhook_deliveries d
WHERE d.status = 'dlq' AND d.id > %(after)s
  AND (%(org)s::uuid IS NULL OR d.org_id = %(org)s)
  AND (%(webhook)s::uuid IS NULL OR d.webhook_id = %(webhook)s)
  AND (%(since)s::timestamptz IS NULL OR d.created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR d.created_at < %(until)s)
ORDER BY d.id LIMIT %(batch)s;

-- name: admin_dlq_retry_ids
SELECT retried, skipped_inactive
FROM dispatcher.retry_dlq(%(org)s, NULL, %(since)s, %(until)s, %(ids)s::uuid[]);

-- name: admin_now
SELECT now() AS now;

-- name: admin_recover_plan
-- How many events `recover` would queue, and where to cut the window so that each slice
-- holds about %(batch)s of them: the created_at of every %(batch)s-th candidate.
SELECT count(*)::bigint AS n,
       coalesce(array_agg(DISTINCT c.created_at) FILTER (WHERE c.rn %% %(batch)s = 0),
                '{}') AS cuts
FROM (
    SELECT e.created_at, row_number() OVER (ORDER BY e.created_at) AS rn
    FROM public.webhooks w
    CROSS JOIN LATERAL dispatcher.recover_candidates_v1(
        %(org)s, w.id, w.events, %(since)s, %(until)s) e
    WHERE w.id = %(webhook)s
) c;

-- name: admin_webhook_health_org
-- Endpoint health (0028_webhook_health.sql): the organization's webhooks, or one of
-- them (%(webhook)s; refused when it belongs to another organization).
SELECT * FROM dispatcher.webhook_health(%(org)s, %(webhook)s);

-- name: admin_webhook_health_all
-- Every organization's webhooks (operators).
SELECT * FROM dispatcher.webhook_health h ORDER BY h.org_id, h.name, h.webhook_id;
