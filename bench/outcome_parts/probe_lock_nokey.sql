-- Diagnostic variants of delivery_record_outcomes_lean, not shippable (docs/performance.md,
-- "Issue 12: the outcome statement, part by part"): bench/statement_cpu.py --probe FILE.
-- probe_lock_nokey: probe_lock with FOR NO KEY UPDATE.
-- name: probe
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
FOR NO KEY UPDATE OF d SKIP LOCKED) l
)
SELECT count(*) AS n FROM mine;
