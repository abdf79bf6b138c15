-- Diagnostic variants of delivery_record_outcomes_lean, not shippable (docs/performance.md,
-- "Issue 12: the outcome statement, part by part"): bench/statement_cpu.py --probe FILE.
-- probe_parse: the batch's text parsed to jsonb.
-- name: probe
SELECT jsonb_typeof(%(rows)s::jsonb) AS t;
