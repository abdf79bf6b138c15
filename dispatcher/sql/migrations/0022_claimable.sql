-- 0022: one definition of which webhooks the claim statements may take rows of, as far as
-- the database knows. dispatcher/admission.py adds what only this process knows (attempts
-- in flight, rate tokens, failures not yet recorded) and passes it as the room parameters;
-- it uses the same FAILING_AFTER and the same probe schedule (probe_delay), and
-- tests/integration/test_claimable_sql.py holds the two schedules to each other.
--
-- A webhook with `failing_after` or more consecutive failures is failing: it gets one probe
-- at a time, spaced from its last failure by its org's backoff (base * 2^(streak -
-- failing_after), at most max), the org's settings clamped to the host UI's ranges as
-- RetryPolicy clamps them. Rows of webhooks that are not active (or soft-deleted) are
-- always claimable: they are recorded, never sent.

CREATE FUNCTION dispatcher.probe_delay_v1(
    streak integer, base_delay integer, max_delay integer, failing_after integer
) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN coalesce(streak, 0) < failing_after THEN 0::double precision
           ELSE least(
               least(greatest(coalesce(base_delay, 5), 1), 60)
                 * power(2::double precision, least(streak - failing_after, 20)),
               least(greatest(coalesce(max_delay, 300), 1), 3600))
           END
$$;

CREATE FUNCTION dispatcher.webhook_claimable_v1(
    status text, deleted_at timestamptz, streak integer, last_failure_at timestamptz,
    base_delay integer, max_delay integer, failing_after integer
) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT status IS DISTINCT FROM 'active' OR deleted_at IS NOT NULL
        OR coalesce(streak, 0) < failing_after
        OR last_failure_at IS NULL
        OR last_failure_at + make_interval(
               secs => dispatcher.probe_delay_v1(streak, base_delay, max_delay, failing_after)
           ) <= now()
$$;
