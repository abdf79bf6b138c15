-- Diagnostic variants of delivery_record_outcomes_lean, not shippable (docs/performance.md,
-- "Issue 12: the outcome statement, part by part"): bench/statement_cpu.py --sql FILE.
-- p1_no_counters: the lean statement without the counters_pending EXISTS.
-- name: delivery_record_outcomes_lean
WITH o AS (
SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(
id uuid, webhook_id uuid, org_id uuid, claim timestamptz, seq integer,
status text, outcome text, attempt integer, attempt_number integer, retry_in double precision,
final boolean, counts boolean, success boolean, gone boolean,
request_url text, request_headers jsonb, response_status integer,
response_headers jsonb, response_body text, duration_ms integer,
error_message text, error_code text, started_at timestamptz, ended_at timestamptz
)
), mine AS (
SELECT l.id
FROM (SELECT o.id, o.claim FROM o ORDER BY o.id) s
CROSS JOIN LATERAL (
SELECT d.id FROM public.webhook_deliveries d
WHERE d.id = s.id
AND coalesce(d.next_retry_at = s.claim AND d.status IN ('pending', 'retrying'), false)
FOR UPDATE OF d SKIP LOCKED) l
), seen AS (
SELECT o.id, o.claim, o.attempt, b.id AS row_id, b.status, b.attempt_number,
coalesce(b.next_retry_at = o.claim AND b.status IN ('pending', 'retrying'), false)
AS claim_held
FROM o
LEFT JOIN LATERAL (
SELECT d.id, d.status, d.attempt_number, d.next_retry_at
FROM public.webhook_deliveries d WHERE d.id = o.id OFFSET 0) b ON true
WHERE o.id NOT IN (SELECT id FROM mine)
), upd AS (
UPDATE public.webhook_deliveries d SET
status = o.status,
attempt_number = o.attempt_number,
request_url = coalesce(o.request_url, d.request_url),
request_headers = coalesce(o.request_headers, d.request_headers),
response_status = o.response_status,
response_headers = o.response_headers,
response_body = o.response_body,
duration_ms = o.duration_ms,
error_message = o.error_message,
error_code = o.error_code,
next_retry_at = CASE WHEN o.retry_in IS NULL THEN NULL
ELSE now() + make_interval(secs => o.retry_in) END,
delivered_at = CASE WHEN o.final THEN now() ELSE d.delivered_at END
FROM o
WHERE d.id = ANY (ARRAY(SELECT id FROM mine)) AND d.id = o.id
RETURNING d.id
), done AS (
SELECT o.* FROM o JOIN upd ON upd.id = o.id
), hist AS (
INSERT INTO dispatcher.attempts (delivery_id, org_id, webhook_id, attempt_number, outcome,
response_status, duration_ms, error_message)
SELECT id, org_id, webhook_id, attempt, outcome, response_status, duration_ms, error_message
FROM done WHERE counts OR (success AND attempt > 1)
), noted AS (
SELECT dispatcher.note_outcomes_v1(webhook_id, outs) AS ok
FROM (SELECT d.webhook_id,
jsonb_agg(jsonb_build_object('success', success, 'counts', counts,
'gone', gone, 'started', started_at,
'ended', ended_at) ORDER BY seq) AS outs
FROM done d WHERE counts OR success OR gone
GROUP BY d.webhook_id
HAVING NOT (bool_and(d.success AND NOT d.counts AND NOT d.gone) AND EXISTS (
SELECT 1 FROM dispatcher.webhook_streaks s
JOIN public.webhooks w ON w.id = s.webhook_id
WHERE s.webhook_id = d.webhook_id AND NOT s.pending AND s.counted_until IS NULL
AND coalesce(w.consecutive_failures, 0) = 0
AND w.last_success_at >= now() - interval '1 second'
AND w.last_triggered_at >= now() - interval '1 second'))
ORDER BY d.webhook_id) per_hook
), dead AS MATERIALIZED (
SELECT dispatcher.dead_lettered_v1(id, webhook_id, attempt, response_status,
error_code, error_message) AS event_id
FROM (SELECT * FROM done WHERE status = 'dlq' ORDER BY webhook_id, id OFFSET 0) dlq
), lost AS (
SELECT s.id,
CASE WHEN s.row_id IS NULL THEN 'deleted'
WHEN s.status IN ('pending', 'retrying') AND s.attempt_number = s.attempt
THEN 'lease_retaken'
ELSE 'changed_by_another_writer' END AS reason
FROM seen s
WHERE NOT s.claim_held
)
SELECT (SELECT count(*) FROM upd) AS recorded,
(SELECT count(*) FROM noted) AS webhooks,
false AS counters_pending,
(SELECT count(event_id) FROM dead) AS dead_lettered_published,
0::bigint AS released, 0::bigint AS rang, '{}'::uuid[] AS release_later,
ARRAY(SELECT s.id FROM seen s WHERE s.claim_held) AS busy,
coalesce((SELECT jsonb_agg(jsonb_build_object('id', id, 'reason', reason)) FROM lost),
'[]'::jsonb) AS lost;
