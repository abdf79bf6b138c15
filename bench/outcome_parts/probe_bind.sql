-- Diagnostic variants of delivery_record_outcomes_lean, not shippable (docs/performance.md,
-- "Issue 12: the outcome statement, part by part"): bench/statement_cpu.py --probe FILE.
-- probe_bind: the parameter bound and its length read: a statement's fixed cost with the batch's text.
-- name: probe
SELECT octet_length(%(rows)s::text) AS n;
