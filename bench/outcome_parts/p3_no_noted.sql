-- Diagnostic variants of delivery_record_outcomes_lean, not shippable (docs/performance.md,
-- "Issue 12: the outcome statement, part by part"): bench/statement_cpu.py --sql FILE.
-- p3_no_noted: p2 without noted (the streak note).
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

), dead AS MATERIALIZED (
SELECT dispatcher.dead_lettered_v1(id, webhook_id, attempt, response_status,
error_code, error_message) AS event_id
FROM (SELECT * FROM done WHERE status = 'dlq' ORDER BY webhook_id, id OFFSET 0) dlq

)
SELECT (SELECT count(*) FROM upd) AS recorded,
0::bigint AS webhooks,
false AS counters_pending,
(SELECT count(event_id) FROM dead) AS dead_lettered_published,
0::bigint AS released, 0::bigint AS rang, '{}'::uuid[] AS release_later,
'{}'::uuid[] AS busy,
'[]'::jsonb AS lost;
