-- 0044: delivery_claim_due's candidate scan in a function that plans it with
-- enable_bitmapscan and enable_sort off (issue 12, docs/performance.md "delivery_claim_due's
-- plan").
--
-- The claim reads the due rows in the order they became due, through the partial index
-- dispatcher_deliveries_due_since, locks them SKIP LOCKED and stops at its LIMIT (scan: 4x
-- the rows asked for). Planned with its parameters (psycopg's first five runs, PostgreSQL's
-- next five custom plans, and again after statistics change), the planner often took a bitmap
-- scan of every due row of that index instead, then sorted them: with the statistics of a
-- table that was empty at its last ANALYZE, 20,000 due rows for 176 candidates, ~37 shared
-- buffers per claimed row against ~22 in order. PostgreSQL offers the bitmap for any partial
-- index whose predicate the query implies, and a sort of any scan, so no form of the statement
-- rules them out; settings of a function do, for this one query only. The rows and their
-- order are the statement's as before (same WHERE, ORDER BY, LIMIT, FOR UPDATE OF d SKIP
-- LOCKED); the index's upper bound (due now) stays the index condition.
--
-- PL/pgSQL, so the plan is kept for the session (a SQL function with SET clauses is planned
-- again on every call); VOLATILE (it locks). Columns cast to the types declared below, so
-- a host's varchar lengths or integer widths do not break RETURN QUERY. Called once per claim
-- (a FROM-clause function scan in the statement's first CTE).
--
-- Two snapshots: being VOLATILE, the function's query takes a snapshot a moment after the
-- calling statement's. A row committed in between (a new pending row) can be locked and
-- returned here but not seen by delivery_claim_due's UPDATE: it is neither leased nor
-- returned, stays due for the next claim, and only took one of this claim's scan slots. A
-- row changed in between is read at its newest version here, and the UPDATE re-checks the
-- version it locked (EvalPlanQual): never leased twice, never lost.
CREATE OR REPLACE FUNCTION dispatcher.claim_candidates_v1(
    full_ids uuid[], failing_after integer, scan integer
) RETURNS TABLE (
    id uuid, webhook_id uuid, created_at timestamptz, due_at timestamptz,
    url text, secret text, headers text, webhook_status text,
    webhook_deleted_at timestamptz, failing boolean,
    max_retries integer, retry_strategy text, base_delay_seconds integer,
    max_delay_seconds integer, enable_jitter boolean, enable_dlq boolean
)
LANGUAGE plpgsql VOLATILE
ROWS 200
SET enable_bitmapscan = off
SET enable_sort = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT d.id::uuid, d.webhook_id::uuid, d.created_at::timestamptz,
           coalesce(d.next_retry_at, d.created_at)::timestamptz,
           w.url::text, w.secret::text, w.headers::text, w.status::text,
           w.deleted_at::timestamptz,
           coalesce(w.consecutive_failures, 0) >= claim_candidates_v1.failing_after,
           rc.max_retries::integer, rc.retry_strategy::text, rc.base_delay_seconds::integer,
           rc.max_delay_seconds::integer, rc.enable_jitter::boolean, rc.enable_dlq::boolean
    FROM public.webhook_deliveries d
    JOIN public.webhooks w ON w.id = d.webhook_id
    LEFT JOIN public.integration_retry_config rc ON rc.org_id = d.org_id
    WHERE d.status IN ('pending', 'retrying')
      AND coalesce(d.next_retry_at, d.created_at) <= now()
      AND d.webhook_id <> ALL (claim_candidates_v1.full_ids)
      -- which webhooks may be claimed, as the database knows it (0022_claimable.sql)
      AND dispatcher.webhook_claimable_v1(w.status, w.deleted_at, w.consecutive_failures,
                                          w.last_failure_at, rc.base_delay_seconds,
                                          rc.max_delay_seconds,
                                          claim_candidates_v1.failing_after)
      -- an ordered webhook's keyed delivery waits until the previous one of its key is
      -- final (0032); before the LIMIT, so a blocked key never fills the scan. A scalar
      -- subquery, evaluated per row through the primary key: as NOT EXISTS the planner
      -- hashes it over the whole table.
      AND (NOT EXISTS (SELECT 1 FROM dispatcher.webhook_settings wset
                       WHERE wset.webhook_id = d.webhook_id AND wset.ordered)
           OR coalesce((SELECT dispatcher.order_free_v1(k.webhook_id, k.order_key, k.sequence)
                        FROM dispatcher.delivery_sequence k
                        WHERE k.delivery_id = d.id), true))
    -- in the order it became due (index dispatcher_deliveries_due_since), read in that
    -- order and no further than the LIMIT: the settings above leave no other plan
    ORDER BY coalesce(d.next_retry_at, d.created_at)
    LIMIT claim_candidates_v1.scan
    FOR UPDATE OF d SKIP LOCKED;
END
$$;
