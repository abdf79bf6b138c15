-- bench/claim_parts.py variant (branch claimparts, issue 12): a measured prototype, NOT a
-- migration. claim_candidates_v2 locks up to `scan` (4 x limit) candidates and the statement
-- then ranks them per webhook and keeps those inside the room; this function reads the same
-- query row by row (same WHERE, order, SKIP LOCKED, `scan` at most) and stops as soon as the
-- rows read hold `wanted` that the statement's room test keeps, at a point where every row
-- not read sorts after every row read in (due_at, created_at); the statement is the tree's
-- with this function in place of v2, so its ranking, room, failing probe, sequence, previous
-- secret and policy are unchanged. Locks ~limit + plpgsql's prefetch (10) rows instead of
-- 4 x limit. docs/performance.md, "the claim statement, part by part (claimparts)".
--
-- Differs from v2 only where a due_at group holds both a row whose created_at equals its
-- due_at (a pending row) and, read later in index order, a row created earlier (a retry due
-- at that exact microsecond): v2's order would lease the earlier-created one first.
-- name: function_prefix
CREATE OR REPLACE FUNCTION dispatcher.claim_candidates_prefix(
    full_ids uuid[], failing_after integer, scan integer,
    room_ids uuid[], room_left integer[], hook_cap integer, wanted integer
) RETURNS TABLE (
    id uuid, webhook_id uuid, org_id uuid, created_at timestamptz, due_at timestamptz,
    url text, secret text, headers text, webhook_status text,
    webhook_deleted_at timestamptz, failing boolean
)
LANGUAGE plpgsql VOLATILE
ROWS 50
SET enable_bitmapscan = off
SET enable_sort = off
AS $$
#variable_conflict use_column
DECLARE
    r record;
    hooks uuid[] := '{}';
    seen integer[] := '{}';
    allowed integer[] := '{}';
    accepted integer := 0;
    boundary timestamptz;
    uniform boolean := true;
    i integer;
BEGIN
    FOR r IN
    SELECT d.id::uuid, d.webhook_id::uuid, d.org_id::uuid, d.created_at::timestamptz,
           coalesce(d.next_retry_at, d.created_at)::timestamptz AS due_at,
           w.url::text, w.secret::text, w.headers::text, w.status::text AS webhook_status,
           w.deleted_at::timestamptz AS webhook_deleted_at,
           coalesce(w.consecutive_failures, 0) >= claim_candidates_prefix.failing_after AS failing
    FROM public.webhook_deliveries d
    JOIN public.webhooks w ON w.id = d.webhook_id
    WHERE d.status IN ('pending', 'retrying')
      AND coalesce(d.next_retry_at, d.created_at) <= now()
      AND d.webhook_id <> ALL (claim_candidates_prefix.full_ids)
      -- which webhooks may be claimed, as the database knows it (0022_claimable.sql); the
      -- policy's two columns are read only past `streak < failing_after` (each used once
      -- in the function's body, so it is still inlined)
      AND dispatcher.webhook_claimable_v1(
              w.status, w.deleted_at, w.consecutive_failures, w.last_failure_at,
              (SELECT rc.base_delay_seconds FROM public.integration_retry_config rc
               WHERE rc.org_id = d.org_id),
              (SELECT rc.max_delay_seconds FROM public.integration_retry_config rc
               WHERE rc.org_id = d.org_id),
              claim_candidates_prefix.failing_after)
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
    LIMIT claim_candidates_prefix.scan
    FOR UPDATE OF d SKIP LOCKED
    LOOP
        -- enough rows that may be leased: stop before a row that sorts after every row
        -- read, in (due_at, created_at), so the statement's order leases the same rows as
        -- from all `scan` (a pending row: created_at = due_at)
        EXIT WHEN accepted >= wanted
              AND (r.due_at > boundary OR (uniform AND r.created_at = r.due_at));
        IF r.due_at IS DISTINCT FROM boundary THEN
            uniform := true;
        END IF;
        uniform := uniform AND r.created_at = r.due_at;
        id := r.id; webhook_id := r.webhook_id; org_id := r.org_id;
        created_at := r.created_at; due_at := r.due_at; url := r.url; secret := r.secret;
        headers := r.headers; webhook_status := r.webhook_status;
        webhook_deleted_at := r.webhook_deleted_at; failing := r.failing;
        RETURN NEXT;
        boundary := r.due_at;
        IF r.webhook_status <> 'active' OR r.webhook_deleted_at IS NOT NULL THEN
            accepted := accepted + 1;
        ELSE
            i := array_position(hooks, r.webhook_id);
            IF i IS NULL THEN
                hooks := hooks || r.webhook_id;
                i := cardinality(hooks);
                seen := seen || 0;
                allowed := allowed || least(CASE WHEN r.failing THEN 1 ELSE hook_cap END,
                    coalesce(room_left[array_position(room_ids, r.webhook_id)], hook_cap));
            END IF;
            seen[i] := seen[i] + 1;
            IF seen[i] <= allowed[i] THEN
                accepted := accepted + 1;
            END IF;
        END IF;
    END LOOP;
END
$$;

-- name: delivery_claim_due
-- Lease up to %(limit)s due deliveries (pending, or retrying whose time has
-- come, whoever wrote them). The lease end is written to next_retry_at and is
-- the claim token: an outcome is recorded only while it is unchanged.
-- Which webhooks, and how many rows each: dispatcher/admission.py's room (room_ids/
-- room_left, at most %(hook_cap)s for the others, full_ids not scanned at all) and
-- dispatcher.webhook_claimable_v1 (0022): a failing webhook (%(failing_after)s+
-- consecutive failures) gets one probe at a time, spaced by its org's backoff after its
-- last failure, so it never hammers nor hogs slots.
WITH candidates AS (
    -- Due rows of the webhooks that may be claimed, oldest due first, locked SKIP LOCKED,
    -- at most %(scan)s (0044_claim_candidates.sql): read from dispatcher_deliveries_due_since
    -- in its order and no further than the limit, in every plan (custom plans here took a
    -- bitmap scan of every due row and a sort). Ordered webhooks' keyed rows wait until the
    -- previous one of their key is final (0032), inside, before the limit. The org's retry
    -- policy is read there only for a failing webhook (0045), here for the leased rows.
    SELECT c.* FROM dispatcher.claim_candidates_prefix(%(full_ids)s::uuid[],
                                                   %(failing_after)s::integer,
                                                   %(scan)s::integer,
                                                   %(room_ids)s::uuid[], %(room_left)s::int[],
                                                   %(hook_cap)s::integer, %(limit)s::integer) c
), ranked AS (
    SELECT c.*, row_number() OVER (PARTITION BY c.webhook_id ORDER BY c.due_at, c.created_at)
                AS hook_rank
    FROM candidates c
), due AS (
    SELECT r.* FROM ranked r
    LEFT JOIN unnest(%(room_ids)s::uuid[], %(room_left)s::int[]) AS room (webhook_id, n)
      ON room.webhook_id = r.webhook_id
    WHERE r.webhook_status <> 'active' OR r.webhook_deleted_at IS NOT NULL
       OR r.hook_rank <= least(CASE WHEN r.failing THEN 1 ELSE %(hook_cap)s END,
                               coalesce(room.n, %(hook_cap)s))
    ORDER BY r.due_at, r.created_at
    LIMIT %(limit)s
)
UPDATE public.webhook_deliveries d
SET next_retry_at = now() + make_interval(secs => %(lease)s)
-- its sequence row (0032), if any: the number and whether it is of an ordered key, one
-- primary-key probe per row (delivery_id is delivery_sequence's key: at most one row);
-- its org's retry policy (org_id is unique there: at most one row), for the leased rows
-- only; its webhook's previous secret (webhook_id is webhook_secrets' key), one probe per row
FROM due LEFT JOIN dispatcher.delivery_sequence s ON s.delivery_id = due.id
         LEFT JOIN public.integration_retry_config rc ON rc.org_id = due.org_id
         LEFT JOIN dispatcher.webhook_secrets ws ON ws.webhook_id = due.webhook_id
WHERE d.id = due.id
RETURNING d.id, d.org_id, d.webhook_id, d.event_id, d.event_type, d.request_body,
          coalesce(d.attempt_number, 1) AS attempt_number,
          coalesce(d.max_attempts, 3) AS max_attempts,
          d.status, d.next_retry_at AS claim,
          due.url, due.secret, due.headers, due.webhook_status, due.webhook_deleted_at,
          ws.previous_secret, ws.previous_expires_at,
          rc.max_retries, rc.retry_strategy, rc.base_delay_seconds, rc.max_delay_seconds,
          rc.enable_jitter, rc.enable_dlq, due.failing, 0::bigint AS events_claimed,
          0::bigint AS deliveries_created, d.created_at,
          d.request_headers ->> 'traceparent' AS traceparent,
          s.sequence,
          -- an ordered key's delivery: its outcome needs the full delivery_record_outcomes
          -- (per row; a statement-wide `any key at all?` test first cost ~2 ms a call in
          -- drain1: planned as a scan of every unkeyed row)
          s.order_key IS NOT NULL AS keyed;

