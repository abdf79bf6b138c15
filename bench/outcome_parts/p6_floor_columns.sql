-- Diagnostic variants of delivery_record_outcomes_lean, not shippable (docs/performance.md,
-- "Issue 12: the outcome statement, part by part"): bench/statement_cpu.py --sql FILE.
-- p6_floor_columns: p5 writing only the floor's columns (status, response status/body, duration, lease, delivered_at).
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

), upd AS (
UPDATE public.webhook_deliveries d SET
status = o.status,
response_status = o.response_status,
response_body = o.response_body,
duration_ms = o.duration_ms,
next_retry_at = CASE WHEN o.retry_in IS NULL THEN NULL
ELSE now() + make_interval(secs => o.retry_in) END,
delivered_at = CASE WHEN o.final THEN now() ELSE d.delivered_at END
FROM o
WHERE d.id = ANY (ARRAY(SELECT id FROM o)) AND d.id = o.id
AND coalesce(d.next_retry_at = o.claim AND d.status IN ('pending', 'retrying'), false)
RETURNING d.id

)
SELECT (SELECT count(*) FROM upd) AS recorded,
0::bigint AS webhooks,
false AS counters_pending,
0::bigint AS dead_lettered_published,
0::bigint AS released, 0::bigint AS rang, '{}'::uuid[] AS release_later,
'{}'::uuid[] AS busy,
'[]'::jsonb AS lost;
