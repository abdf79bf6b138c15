-- Named queries, loaded by dispatcher/queries.py. Each block starts with
-- `-- name: <name>` and runs until the next one. Parameters use psycopg's
-- %(name)s style.

-- name: fan_out
-- Claim a batch of %(batch)s outbox rows (events), create one delivery per (event,
-- matching webhook) and delete the outbox rows, in one statement. The first %(claim)s
-- deliveries are created already leased to the caller and returned, so they can
-- be sent without another round trip; the rest are created due now. A matching
-- webhook that is not active (disabled, inactive) gets a `failed` row, unsent,
-- so `recover` can find what it missed; soft-deleted webhooks get nothing.
WITH claimed AS (
    -- Oldest first; by ctid, stable while the rows are locked (a TID scan, no index).
    DELETE FROM dispatcher.outbox
    WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM dispatcher.outbox
        ORDER BY created_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED
    ))
    RETURNING event_id
), claimed_events AS MATERIALIZED (
    -- The claimed events by primary key, first: the planner must never start from an
    -- org's whole event history (an index on events(org_id, created_at) tempts it).
    -- The body once per event, whatever the number of webhooks it goes to; one
    -- definition, shared with recover_webhook (0005_admin_api.sql).
    SELECT b.*, b.body::text AS body_text
    FROM (SELECT e.id, e.org_id, e.event_type, e.created_at,
                 dispatcher.delivery_body_v1(e.id, e.event_type, e.created_at, e.org_id,
                                             e.aggregate_id, e.payload) AS body
          FROM claimed c
          JOIN public.events e ON e.id = c.event_id
          OFFSET 0) b  -- a fence: the body is built once, not again inside body::text
), matched AS (
    SELECT gen_random_uuid() AS id, e.id AS event_id, e.org_id, e.event_type, e.body,
           e.body_text,
           w.id AS webhook_id, w.url, w.secret, w.headers::text AS headers, w.status AS webhook_status,
           w.deleted_at AS webhook_deleted_at,
           rc.max_retries, rc.retry_strategy, rc.base_delay_seconds, rc.max_delay_seconds,
           rc.enable_jitter, rc.enable_dlq,
           least(greatest(coalesce(rc.max_retries, 3), 1), 10) + 1 AS max_attempts,
           -- Claimable now: active, not failing, and under this process's per-webhook cap.
           w.status = 'active' AND coalesce(w.consecutive_failures, 0) < %(failing_after)s
             AND row_number() OVER (PARTITION BY w.id ORDER BY e.created_at, e.id)
                 <= coalesce(room.n, %(hook_cap)s) AS eligible,
           e.created_at AS event_created_at
    FROM claimed_events e
    JOIN public.webhooks w
      ON w.org_id = e.org_id AND w.deleted_at IS NULL
     AND dispatcher.matches_any(w.events, e.event_type)
    LEFT JOIN public.integration_retry_config rc ON rc.org_id = e.org_id
    LEFT JOIN unnest(%(room_ids)s::uuid[], %(room_left)s::int[]) AS room (webhook_id, n)
      ON room.webhook_id = w.id
), ranked AS (
    SELECT m.*, row_number() OVER (PARTITION BY m.eligible
                                   ORDER BY m.event_created_at, m.event_id, m.webhook_id) AS rn
    FROM matched m
), inserted AS (
    INSERT INTO public.webhook_deliveries (
        id, org_id, webhook_id, event_type, event_id, payload, request_url,
        request_headers, request_body, attempt_number, max_attempts, status, next_retry_at,
        error_message, delivered_at
    )
    SELECT id, org_id, webhook_id, left(event_type, 100), event_id, body, url,
           '{}'::jsonb, body_text, 1, max_attempts,
           CASE WHEN webhook_status = 'active' THEN 'pending' ELSE 'failed' END,
           CASE WHEN eligible AND rn <= %(claim)s
                THEN now() + make_interval(secs => %(lease)s) END,
           CASE WHEN webhook_status <> 'active' THEN 'Webhook is not active' END,
           CASE WHEN webhook_status <> 'active' THEN now() END
    FROM ranked
    RETURNING id, next_retry_at
)
SELECT m.id, m.org_id, m.webhook_id, m.event_id, left(m.event_type, 100) AS event_type,
       m.body_text AS request_body, 1 AS attempt_number, m.max_attempts,
       'pending'::text AS status, i.next_retry_at AS claim,
       m.url, m.secret, m.headers, m.webhook_status, m.webhook_deleted_at,
       ws.previous_secret, ws.previous_expires_at,
       m.max_retries, m.retry_strategy, m.base_delay_seconds, m.max_delay_seconds,
       m.enable_jitter, m.enable_dlq,
       (SELECT count(*) FROM claimed) AS events_claimed,
       (SELECT count(*) FROM inserted) AS deliveries_created
FROM matched m
JOIN inserted i ON i.id = m.id AND i.next_retry_at IS NOT NULL
LEFT JOIN dispatcher.webhook_secrets ws ON ws.webhook_id = m.webhook_id
UNION ALL
-- A marker row carrying the counts of events claimed and deliveries created, for
-- batches that produced no claimed delivery (id is null).
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, (SELECT count(*) FROM claimed),
       (SELECT count(*) FROM inserted);

-- name: claim_due
-- Lease up to %(limit)s due deliveries (pending, or retrying whose time has
-- come, whoever wrote them). The lease end is written to next_retry_at and is
-- the claim token: an outcome is recorded only while it is unchanged.
-- Which webhooks, and how many rows each: dispatcher/admission.py's room (room_ids/
-- room_left, at most %(hook_cap)s for the others, full_ids not scanned at all) and
-- dispatcher.webhook_claimable_v1 (0022): a failing webhook (%(failing_after)s+
-- consecutive failures) gets one probe at a time, spaced by its org's backoff after its
-- last failure, so it never hammers nor hogs slots.
WITH candidates AS (
    SELECT d.id, d.webhook_id, d.created_at,
           coalesce(d.next_retry_at, d.created_at) AS due_at,
           w.url, w.secret, w.headers::text AS headers, w.status AS webhook_status,
           w.deleted_at AS webhook_deleted_at,
           coalesce(w.consecutive_failures, 0) >= %(failing_after)s AS failing,
           rc.max_retries, rc.retry_strategy, rc.base_delay_seconds, rc.max_delay_seconds,
           rc.enable_jitter, rc.enable_dlq
    FROM public.webhook_deliveries d
    JOIN public.webhooks w ON w.id = d.webhook_id
    LEFT JOIN public.integration_retry_config rc ON rc.org_id = d.org_id
    WHERE d.status IN ('pending', 'retrying')
      AND coalesce(d.next_retry_at, d.created_at) <= now()
      AND d.webhook_id <> ALL (%(full_ids)s::uuid[])
      -- which webhooks may be claimed, as the database knows it (0022_claimable.sql)
      AND dispatcher.webhook_claimable_v1(w.status, w.deleted_at, w.consecutive_failures,
                                          w.last_failure_at, rc.base_delay_seconds,
                                          rc.max_delay_seconds, %(failing_after)s)
    -- in the order it became due (index dispatcher_deliveries_due_since)
    ORDER BY coalesce(d.next_retry_at, d.created_at)
    LIMIT %(scan)s
    FOR UPDATE OF d SKIP LOCKED
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
FROM due
WHERE d.id = due.id
RETURNING d.id, d.org_id, d.webhook_id, d.event_id, d.event_type, d.request_body,
          coalesce(d.attempt_number, 1) AS attempt_number,
          coalesce(d.max_attempts, 3) AS max_attempts,
          d.status, d.next_retry_at AS claim,
          due.url, due.secret, due.headers, due.webhook_status, due.webhook_deleted_at,
          (SELECT ws.previous_secret FROM dispatcher.webhook_secrets ws
            WHERE ws.webhook_id = d.webhook_id) AS previous_secret,
          (SELECT ws.previous_expires_at FROM dispatcher.webhook_secrets ws
            WHERE ws.webhook_id = d.webhook_id) AS previous_expires_at,
          due.max_retries, due.retry_strategy, due.base_delay_seconds, due.max_delay_seconds,
          due.enable_jitter, due.enable_dlq, due.failing, 0::bigint AS events_claimed,
          0::bigint AS deliveries_created;

-- name: record_outcomes
-- Write a batch of attempt outcomes in one statement: the delivery rows (only
-- where the claim is still ours), the attempt history, and the webhooks'
-- counters. `seq` orders outcomes of one webhook within the batch so the
-- consecutive-failure count stays exact. Returns how many were recorded.
WITH o AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(
        id uuid, webhook_id uuid, org_id uuid, claim timestamptz, seq integer,
        status text, outcome text, attempt integer, attempt_number integer, retry_in double precision,
        final boolean, counts boolean, success boolean, gone boolean,
        request_url text, request_headers jsonb, response_status integer,
        response_headers jsonb, response_body text, duration_ms integer,
        error_message text, error_code text
    )
), upd AS (
    UPDATE public.webhook_deliveries d SET
        status = o.status,
        attempt_number = o.attempt_number,
        request_url = coalesce(o.request_url, d.request_url),
        request_headers = coalesce(o.request_headers, d.request_headers),
        response_status = o.response_status,
        response_headers = o.response_headers,
        response_body = o.response_body,
        duration_ms = o.duration_ms,
        error_message = o.error_message,
        error_code = o.error_code,
        next_retry_at = CASE WHEN o.retry_in IS NULL THEN NULL
                             ELSE now() + make_interval(secs => o.retry_in) END,
        delivered_at = CASE WHEN o.final THEN now() ELSE d.delivered_at END
    FROM o
    WHERE d.id = o.id AND d.next_retry_at = o.claim AND d.status IN ('pending', 'retrying')
    RETURNING d.id
), done AS (
    SELECT o.* FROM o JOIN upd ON upd.id = o.id
), hist AS (
    INSERT INTO dispatcher.attempts (delivery_id, org_id, webhook_id, attempt_number, outcome,
                                     response_status, duration_ms, error_message)
    SELECT id, org_id, webhook_id, attempt, outcome, response_status, duration_ms, error_message
    -- A first attempt that succeeded is fully described by the delivery row itself;
    -- history is kept for every attempt of a delivery that did not succeed at once.
    FROM done WHERE counts OR (success AND attempt > 1)
), last_ok AS (
    SELECT webhook_id, max(seq) FILTER (WHERE success) AS seq, bool_or(gone) AS gone
    FROM done WHERE counts OR success GROUP BY webhook_id
), stats AS (
    SELECT l.webhook_id, l.seq IS NOT NULL AS reset, l.gone,
           count(*) FILTER (WHERE d.counts AND d.seq > coalesce(l.seq, -1)) AS failures,
           bool_or(d.success) AS any_success, bool_or(d.counts) AS any_failure
    FROM last_ok l JOIN done d ON d.webhook_id = l.webhook_id AND (d.counts OR d.success)
    GROUP BY l.webhook_id, l.seq, l.gone
    ORDER BY l.webhook_id
), hooks AS (
    UPDATE public.webhooks w SET
        consecutive_failures = CASE WHEN s.reset THEN s.failures
                                    ELSE coalesce(w.consecutive_failures, 0) + s.failures END,
        last_triggered_at = now(),
        last_success_at = CASE WHEN s.any_success THEN now() ELSE w.last_success_at END,
        last_failure_at = CASE WHEN s.any_failure THEN now() ELSE w.last_failure_at END,
        status = CASE WHEN s.gone AND w.status = 'active' THEN 'disabled' ELSE w.status END
    FROM stats s
    WHERE w.id = s.webhook_id
      -- A batch of successes to a healthy webhook changes only its timestamps: written
      -- at most once a second per webhook (each write is a new row version and runs
      -- the host's trigger). Failures, resets and 410s are always written at once.
      AND (s.any_failure OR s.gone OR coalesce(w.consecutive_failures, 0) <> 0
           OR w.last_success_at IS NULL OR w.last_triggered_at IS NULL
           OR w.last_triggered_at < now() - interval '1 second'
           OR w.last_success_at < now() - interval '1 second')
    RETURNING w.id
)
SELECT count(*) AS recorded FROM upd;

-- name: release_claims
-- Give back leased deliveries that were never attempted (shutdown): due now.
UPDATE public.webhook_deliveries d
SET next_retry_at = CASE WHEN d.status = 'pending' THEN NULL ELSE now() END
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(id uuid, claim timestamptz)
WHERE d.id = r.id AND d.next_retry_at = r.claim AND d.status IN ('pending', 'retrying');

-- name: gauges
-- Cheap figures for /metrics: every count here is served by a partial index or
-- a small table.
SELECT
    (SELECT count(*) FROM public.webhook_deliveries
      WHERE status IN ('pending', 'retrying')
        AND coalesce(next_retry_at, created_at) <= now()) AS due,
    (SELECT extract(epoch FROM now() - min(coalesce(next_retry_at, created_at)))
       FROM public.webhook_deliveries
      WHERE status IN ('pending', 'retrying')
        AND coalesce(next_retry_at, created_at) <= now()) AS oldest_due_seconds,
    (SELECT count(*) FROM public.webhook_deliveries WHERE status = 'pending') AS pending,
    (SELECT count(*) FROM public.webhook_deliveries WHERE status = 'retrying') AS retrying,
    (SELECT count(*) FROM public.webhook_deliveries WHERE status = 'dlq') AS dlq,
    (SELECT count(*) FROM dispatcher.outbox) AS outbox,
    (SELECT count(*) FROM public.webhooks
      WHERE status = 'disabled' AND deleted_at IS NULL) AS webhooks_disabled;

-- name: server_has_lz4
-- Whether default_toast_compression accepts lz4 (PostgreSQL 14+ built with lz4).
SELECT coalesce(bool_or('lz4' = ANY (enumvals)), false) AS lz4
FROM pg_catalog.pg_settings WHERE name = 'default_toast_compression';
