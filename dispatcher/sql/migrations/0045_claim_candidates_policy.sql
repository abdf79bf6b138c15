-- 0045: delivery_claim_due's candidate scan reads the organization's retry policy only for a
-- failing webhook (issue 12, docs/performance.md "where drain1's live PostgreSQL CPU goes").
--
-- claim_candidates_v1 (0044) joined integration_retry_config to every candidate it read and
-- locked, for two things: webhook_claimable_v1's probe spacing, which needs the policy only
-- when the webhook has failed failing_after times in a row, and the policy columns the claim
-- returns, which only the rows it leases need. A claim locks up to 4x the rows it leases
-- (scan), so a live one-webhook drain probed the policy's index ~6 times per leased row
-- (~12 shared buffers of the claim's ~40 per leased row, auto_explain). claim_candidates_v2
-- is v1 with that join replaced by two scalar subqueries inside the claimable test, after its
-- `streak < failing_after` term: evaluated (in order, short-circuit) only for a failing
-- webhook's row; delivery_claim_due reads the policy of the rows it leases, once each.
-- Which rows are candidates, their order, the lock and the LIMIT are v1's.
--
-- v1 stays for a daemon of the previous release during a rolling upgrade.
CREATE OR REPLACE FUNCTION dispatcher.claim_candidates_v2(
    full_ids uuid[], failing_after integer, scan integer
) RETURNS TABLE (
    id uuid, webhook_id uuid, org_id uuid, created_at timestamptz, due_at timestamptz,
    url text, secret text, headers text, webhook_status text,
    webhook_deleted_at timestamptz, failing boolean
)
LANGUAGE plpgsql VOLATILE
ROWS 200
SET enable_bitmapscan = off
SET enable_sort = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT d.id::uuid, d.webhook_id::uuid, d.org_id::uuid, d.created_at::timestamptz,
           coalesce(d.next_retry_at, d.created_at)::timestamptz,
           w.url::text, w.secret::text, w.headers::text, w.status::text,
           w.deleted_at::timestamptz,
           coalesce(w.consecutive_failures, 0) >= claim_candidates_v2.failing_after
    FROM public.webhook_deliveries d
    JOIN public.webhooks w ON w.id = d.webhook_id
    WHERE d.status IN ('pending', 'retrying')
      AND coalesce(d.next_retry_at, d.created_at) <= now()
      AND d.webhook_id <> ALL (claim_candidates_v2.full_ids)
      -- which webhooks may be claimed, as the database knows it (0022_claimable.sql); the
      -- policy's two columns are read only past `streak < failing_after` (each used once
      -- in the function's body, so it is still inlined)
      AND dispatcher.webhook_claimable_v1(
              w.status, w.deleted_at, w.consecutive_failures, w.last_failure_at,
              (SELECT rc.base_delay_seconds FROM public.integration_retry_config rc
               WHERE rc.org_id = d.org_id),
              (SELECT rc.max_delay_seconds FROM public.integration_retry_config rc
               WHERE rc.org_id = d.org_id),
              claim_candidates_v2.failing_after)
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
    LIMIT claim_candidates_v2.scan
    FOR UPDATE OF d SKIP LOCKED;
END
$$;
