-- 0037: one home for the organization's retry policy in SQL (issue 15, "one home per rule").
--
-- integration_retry_config's defaults and the host UI's ranges (docs/host-contract.md,
-- "Retry policy"; the host's table has no CHECKs, so every reader clamps) were written
-- out in each statement that read them. They are written once here, in
-- dispatcher.retry_policy_v1, and every statement passes it the raw column values it
-- joined (NULL: no row, or a NULL in the host's row). Its Python twin is
-- dispatcher/backoff.py (RetryPolicy.from_row); tests/integration/test_rules_sql.py holds the
-- two to each other over the whole range, out-of-range and NULL values included.
--
-- A plain SQL expression, IMMUTABLE, no SET clause: the planner inlines it, and a field
-- taken from it, `(dispatcher.retry_policy_v1(max_retries => rc.max_retries)).max_retries`,
-- folds to the bare clamp expression, so a hot statement pays nothing for the call.

CREATE TYPE dispatcher.retry_policy_v1 AS (
    max_retries integer,
    retry_strategy text,
    base_delay_seconds integer,
    max_delay_seconds integer,
    enable_jitter boolean,
    enable_dlq boolean,
    dlq_retention_days integer
);

-- Every value clamped to the host UI's range; NULL (or an unknown strategy) is the host's
-- column default. Called with no arguments: the defaults.
CREATE FUNCTION dispatcher.retry_policy_v1(
    max_retries integer DEFAULT NULL,
    retry_strategy text DEFAULT NULL,
    base_delay_seconds integer DEFAULT NULL,
    max_delay_seconds integer DEFAULT NULL,
    enable_jitter boolean DEFAULT NULL,
    enable_dlq boolean DEFAULT NULL,
    dlq_retention_days integer DEFAULT NULL
) RETURNS dispatcher.retry_policy_v1
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT ROW(
        least(greatest(coalesce(max_retries, 3), 1), 10),
        CASE WHEN retry_strategy IN ('exponential', 'linear', 'fixed') THEN retry_strategy
             ELSE 'exponential' END,
        least(greatest(coalesce(base_delay_seconds, 5), 1), 60),
        least(greatest(coalesce(max_delay_seconds, 300), 1), 3600),
        coalesce(enable_jitter, true),
        coalesce(enable_dlq, true),
        least(greatest(coalesce(dlq_retention_days, 30), 1), 90)
    )::dispatcher.retry_policy_v1
$$;

-- The helpers that wrote the ranges out themselves now ask retry_policy_v1 (same
-- signatures, same results).

-- 0005: attempts a new delivery of the organization gets: max_retries + 1.
CREATE OR REPLACE FUNCTION dispatcher.max_attempts_v1(p_org_id uuid) RETURNS integer
LANGUAGE sql STABLE
AS $$
    SELECT (dispatcher.retry_policy_v1(max_retries => (
        SELECT rc.max_retries FROM public.integration_retry_config rc
        WHERE rc.org_id = p_org_id))).max_retries + 1
$$;

-- 0020: how long the org keeps what failed.
CREATE OR REPLACE FUNCTION dispatcher.dlq_retention_v1(p_org_id uuid) RETURNS interval
LANGUAGE sql STABLE
AS $$
    SELECT make_interval(days => (dispatcher.retry_policy_v1(dlq_retention_days => (
        SELECT rc.dlq_retention_days FROM public.integration_retry_config rc
        WHERE rc.org_id = p_org_id))).dlq_retention_days)
$$;

-- 0022: a failing webhook's probe spacing, from the org's clamped base and max delays.
CREATE OR REPLACE FUNCTION dispatcher.probe_delay_v1(
    streak integer, base_delay integer, max_delay integer, failing_after integer
) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN coalesce(streak, 0) < failing_after THEN 0::double precision
           ELSE least(
               (dispatcher.retry_policy_v1(base_delay_seconds => base_delay)).base_delay_seconds
                 * power(2::double precision, least(streak - failing_after, 20)),
               (dispatcher.retry_policy_v1(max_delay_seconds => max_delay)).max_delay_seconds)
           END
$$;
