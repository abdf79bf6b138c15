-- Diagnostic variants of delivery_record_outcomes_lean, not shippable (docs/performance.md,
-- "Issue 12: the outcome statement, part by part"): bench/statement_cpu.py --probe FILE.
-- probe_counters: the counters_pending EXISTS alone.
-- name: probe
SELECT %(rows)s::text IS NULL AS x, EXISTS (SELECT 1 FROM dispatcher.webhook_streaks WHERE pending) AS counters_pending;
