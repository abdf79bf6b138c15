-- Diagnostic variants of delivery_record_outcomes_lean, not shippable (docs/performance.md,
-- "Issue 12: the outcome statement, part by part"): bench/statement_cpu.py --probe FILE.
-- probe_decode: jsonb_to_recordset: the batch decoded into typed rows.
-- name: probe
SELECT count(*) AS n FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(
id uuid, webhook_id uuid, org_id uuid, claim timestamptz, seq integer,
status text, outcome text, attempt integer, attempt_number integer, retry_in double precision,
final boolean, counts boolean, success boolean, gone boolean,
request_url text, request_headers jsonb, response_status integer,
response_headers jsonb, response_body text, duration_ms integer,
error_message text, error_code text, started_at timestamptz, ended_at timestamptz
);
