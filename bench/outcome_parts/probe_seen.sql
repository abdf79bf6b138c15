-- Diagnostic variants of delivery_record_outcomes_lean, not shippable (docs/performance.md,
-- "Issue 12: the outcome statement, part by part"): bench/statement_cpu.py --probe FILE.
-- probe_seen: decode and the seen probes of every outcome (primary key), nothing locked.
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
)
SELECT count(b.id) AS n FROM o LEFT JOIN LATERAL (
SELECT d.id, d.status, d.attempt_number, d.next_retry_at
FROM public.webhook_deliveries d WHERE d.id = o.id OFFSET 0) b ON true;
