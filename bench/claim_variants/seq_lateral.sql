-- bench/claim_parts.py variant (branch claimparts, issue 12): the tree's delivery_claim_due
-- with its delivery_sequence join as a LATERAL subquery with OFFSET 0, so each leased row is
-- one primary-key probe in every plan (the tree's generic plan hashes the whole
-- delivery_sequence table when it is small: a Seq Scan of 2,000 rows per claim in the
-- replay). Same rows, same columns. docs/performance.md, "the claim statement, part by part".
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
    SELECT c.* FROM dispatcher.claim_candidates_v2(%(full_ids)s::uuid[],
                                                   %(failing_after)s::integer,
                                                   %(scan)s::integer) c
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
FROM due LEFT JOIN LATERAL (SELECT s.sequence, s.order_key FROM dispatcher.delivery_sequence s
                             WHERE s.delivery_id = due.id OFFSET 0) s ON true
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

