-- The delivery path's statements (dispatcher/dispatch.py, delivery.py, recorder.py,
-- app.py), loaded by dispatcher/queries.py. Each block starts with
-- `-- name: <name>` and runs until the next one. Parameters use psycopg's
-- %(name)s style.

-- name: delivery_fan_out
-- Claim a batch of %(batch)s outbox rows (events), create one delivery per (event,
-- matching webhook) and delete the outbox rows, in one statement. The first %(claim)s
-- deliveries are created already leased to the caller and returned, so they can
-- be sent without another round trip; the rest are created due now. A webhook
-- switched off by a person (inactive) or soft-deleted gets nothing; one switched
-- off automatically (disabled) holds the event in dispatcher.held (no host row),
-- released when it is enabled again (0020_hold.sql).
-- An outbox row leaves the outbox only when its event was read: a row whose event
-- this role cannot see (row-level security) stays, backs off (misses, retry_at) and
-- is counted in events_unreadable. %(only)s (an event id, or null) narrows the batch
-- to one event: the last step of shrinking a batch that exceeds statement_timeout.
-- Never waits on a lock held on one webhook's row: the rows a delivery or a hold will
-- reference are locked FOR KEY SHARE SKIP LOCKED first (the foreign key checks then
-- find them locked by us). An event matched to a webhook whose row the host holds
-- (SELECT ... FOR UPDATE, DELETE) is left whole in the outbox, nothing of it written,
-- and taken again 1 s later (events_deferred): the other events, and every other
-- tenant, flow meanwhile. A plain UPDATE of a webhook takes FOR NO KEY UPDATE, which
-- does not conflict.
-- Lean variant (issue 12; dispatcher/queries.py): without the ordered-key parts (0032), for
-- while no webhook that a fan-out can match is ordered. Its `gate` reads, in this
-- statement's snapshot, whether some live (not soft-deleted, active or disabled) webhook is
-- ordered; if so it picks nothing and its marker row says so (ordered_refused), and the
-- daemon runs the full statement. Where it acts, the full one does the same: `matched`
-- joins only such webhooks, so every order_key below is null. An ordered webhook that was
-- soft-deleted or switched off (inactive) keeps its settings row but cannot be matched.
WITH
-- [lean]
gate AS MATERIALIZED (
    SELECT EXISTS (SELECT 1 FROM dispatcher.webhook_settings s
                   JOIN public.webhooks w ON w.id = s.webhook_id
                   WHERE s.ordered AND w.deleted_at IS NULL
                     AND w.status IN ('active', 'disabled')) AS ordered
),
-- [end]
picked AS MATERIALIZED (
    -- Oldest first; by ctid, stable while the rows are locked (a TID scan, no index).
    SELECT o.ctid AS row_id, o.event_id, o.created_at AS queued_at
    FROM dispatcher.outbox o
    WHERE (o.retry_at IS NULL OR o.retry_at <= now())
      AND (%(only)s::uuid IS NULL OR o.event_id = %(only)s::uuid)
-- [lean]
      AND NOT (SELECT g.ordered FROM gate g)
-- [end]
    ORDER BY o.created_at LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), claimed_events AS MATERIALIZED (
    -- The claimed events by primary key, first: the planner must never start from an
    -- org's whole event history (an index on events(org_id, created_at) tempts it).
    -- The body once per event, whatever the number of webhooks it goes to; one
    -- definition, shared with recover_webhook (0005_admin_api.sql).
    SELECT b.*, b.body::text AS body_text
    FROM (SELECT p.row_id, p.queued_at, e.id, e.org_id, e.event_type, e.created_at, e.aggregate_id,
                 -- a lifecycle event: the webhook it is about (0026_lifecycle_events.sql)
                 e.metadata #>> '{dispatcher,webhook_id}' AS about_webhook,
                 dispatcher.delivery_body_v1(e.id, e.event_type, e.created_at, e.org_id,
                                             e.aggregate_id, e.payload) AS body,
                 -- the publisher's W3C trace context, kept in request_headers (0023)
                 dispatcher.event_traceparent_v1(e.metadata, e.correlation_id) AS traceparent
          FROM picked p
          JOIN public.events e ON e.id = p.event_id
          OFFSET 0) b  -- a fence: the body is built once, not again inside body::text
), unreadable AS (
    -- Taken but not read: kept, and not taken again for 5 s, 10 s, ... up to 5 minutes.
    -- The four outbox writes (this one, deferred, ordered_later, claimed) join their rows on
    -- ctid: a parameterized Tid Scan per row when planned at a realistic outbox size, where
    -- `ctid = ANY (ARRAY(...))` was costed at ten rows and planned, generic plans included,
    -- as a sequential scan of an outbox that looked small, kept while its dead rows piled up.
    -- A plan made while the outbox was a few pages still scans it to pick and delete
    -- (docs/performance.md, branch fanlean: "not reached: TID in every plan"). All four are
    -- gated (`-- gate`: uncorrelated, a one-time filter): a write with nothing to
    -- write reads no outbox page, whatever the plan (tests/integration/test_plans.py).
    UPDATE dispatcher.outbox o
    SET misses = coalesce(o.misses, 0) + 1,
        retry_at = now() + make_interval(secs => least(5 * 2 ^ least(coalesce(o.misses, 0), 6), 300))
    FROM picked p
    WHERE o.ctid = p.row_id
      AND NOT EXISTS (SELECT 1 FROM claimed_events c WHERE c.row_id = p.row_id)
      -- gate: a row was taken but not read. Counted, not `EXISTS (picked p2 WHERE NOT EXISTS
      -- (claimed_events ...))`: that one was planned for its first row, as a nested loop
      -- rescanning claimed_events for every picked row, and found none in a pass that read
      -- every event (the common case) after n^2/2 comparisons: ~8.5 ms of CPU in a 425-event
      -- fan-out, ~60 ms at 1,000 (docs/performance.md, branch fanrow). claimed_events' rows
      -- are picked rows (DISTINCT: a partitioned events may repeat an id across partitions).
      AND (SELECT count(DISTINCT c.row_id) FROM claimed_events c) < (SELECT count(*) FROM picked)
    RETURNING o.event_id
), matched AS (
    -- Claimable now (eligible) counts the events of `waiting` too: while a webhook row is
    -- held, a pass may lease fewer rows than it could (the others are created due).
    SELECT gen_random_uuid() AS id, e.row_id, e.id AS event_id, e.org_id, e.event_type,
           e.body, e.body_text, e.traceparent,
           w.id AS webhook_id, w.url, w.secret, w.headers::text AS headers, w.status AS webhook_status,
           w.deleted_at AS webhook_deleted_at,
           rc.max_retries, rc.retry_strategy, rc.base_delay_seconds, rc.max_delay_seconds,
           rc.enable_jitter, rc.enable_dlq,
           -- the org's policy clamped to the host UI's ranges (0037)
           (dispatcher.retry_policy_v1(max_retries => rc.max_retries)).max_retries + 1
               AS max_attempts,
           -- Claimable now: active, not failing, and under this process's per-webhook cap.
           w.status = 'active' AND coalesce(w.consecutive_failures, 0) < %(failing_after)s
-- [full]
             -- an ordered key waits for delivery_claim_due, which checks earlier deliveries (0032)
             AND NOT (coalesce(wset.ordered, false) AND e.aggregate_id IS NOT NULL)
-- [end]
             AND row_number() OVER (PARTITION BY w.id ORDER BY e.created_at, e.id)
                 <= coalesce(room.n, %(hook_cap)s) AS eligible,
           e.created_at AS event_created_at,
-- [full]
           CASE WHEN wset.ordered THEN e.aggregate_id END AS order_key, e.queued_at
-- [lean]
           NULL::uuid AS order_key, e.queued_at
-- [end]
    FROM claimed_events e
    JOIN public.webhooks w
      ON w.org_id = e.org_id AND w.deleted_at IS NULL AND w.status IN ('active', 'disabled')
     AND dispatcher.matches_any(w.events, e.event_type)
     -- no feedback loop: a lifecycle event is not sent to the webhook it is about
     -- while that webhook is failing (not active, or a failure since its last success)
     AND NOT coalesce(e.about_webhook = w.id::text
                      AND (w.status <> 'active' OR coalesce(w.consecutive_failures, 0) > 0),
                      false)
    LEFT JOIN public.integration_retry_config rc ON rc.org_id = e.org_id
    LEFT JOIN unnest(%(room_ids)s::uuid[], %(room_left)s::int[]) AS room (webhook_id, n)
      ON room.webhook_id = w.id
-- [full]
    LEFT JOIN dispatcher.webhook_settings wset ON wset.webhook_id = w.id
-- [end]
), locked AS MATERIALIZED (
    -- What the foreign keys of webhook_deliveries and held need, taken without waiting.
    SELECT w.id FROM public.webhooks w
    WHERE w.id = ANY (ARRAY(SELECT DISTINCT m.webhook_id FROM matched m))
    FOR KEY SHARE SKIP LOCKED
), waiting AS MATERIALIZED (
    -- Events with a webhook whose row someone else holds: left in the outbox, whole.
    SELECT DISTINCT m.row_id FROM matched m
    WHERE NOT EXISTS (SELECT 1 FROM locked l WHERE l.id = m.webhook_id)
), deferred AS (
    UPDATE dispatcher.outbox o
    SET retry_at = now() + interval '1 second', misses = NULL  -- read: not unreadable
    FROM waiting x
    WHERE o.ctid = x.row_id
      AND EXISTS (SELECT 1 FROM waiting)  -- gate
    RETURNING o.event_id
-- [full]
), contended AS MATERIALIZED (
    -- Ordered keys (0032): numbers must follow the order rows were taken. An outbox row of
    -- an ordered key of this batch, older than the batch's newest row and still there but
    -- not numbered by this statement, holds that key's newer events of the batch in the
    -- outbox for the next round: a row another fan-out in progress took (this one takes
    -- the oldest it can lock); one left for a second because a webhook row it needs was
    -- held (retry_at ahead, misses cleared: fan-outs that left a key's events at different
    -- times bring them back at different times), by an earlier fan-out or by this one
    -- (`waiting`, for another webhook of the event). Rows of events this role cannot read
    -- (misses) do not count, nor does another key's row: one unreadable event, or one
    -- held webhook row, never holds every tenant's ordered keys. One probe of outbox_oldest.
    SELECT e.aggregate_id AS order_key, o.created_at,
           -- not due until later: left behind a held webhook row, by this statement or before
           (EXISTS (SELECT 1 FROM waiting x WHERE x.row_id = o.ctid) OR o.retry_at > now())
               AS later
    FROM dispatcher.outbox o
    JOIN public.events e ON e.id = o.event_id
    WHERE %(only)s::uuid IS NULL
      AND o.created_at < (SELECT max(m.queued_at) FROM matched m WHERE m.order_key IS NOT NULL)
      AND (o.retry_at IS NULL OR o.retry_at <= now() OR coalesce(o.misses, 0) = 0)
      AND (NOT EXISTS (SELECT 1 FROM picked p WHERE p.row_id = o.ctid)
           OR EXISTS (SELECT 1 FROM waiting x WHERE x.row_id = o.ctid))
      AND e.aggregate_id IN (SELECT m.order_key FROM matched m WHERE m.order_key IS NOT NULL)
), ordered_wait AS MATERIALIZED (
    -- Events of a contended key newer than a row of it left behind (counted once: not
    -- those left whole in `waiting` anyway): left in the outbox for the next round.
    SELECT m.event_id, m.row_id, bool_or(c.later) AS later FROM matched m
    JOIN contended c ON c.order_key = m.order_key AND c.created_at < m.queued_at
    WHERE m.order_key IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM waiting x WHERE x.row_id = m.row_id)
    GROUP BY m.event_id, m.row_id
), ordered_later AS (
    -- ...and when what they wait for is not due before a second from now (a held webhook
    -- row), neither are they: otherwise the next pass would pick the same oldest rows
    -- again, and a key with a batch of such events would keep every tenant's newer events
    -- out of the fan-out while the host holds one row. Waiting for another fan-out still
    -- in progress, they stay due at once.
    UPDATE dispatcher.outbox o
    SET retry_at = now() + interval '1 second', misses = NULL
    FROM ordered_wait x
    WHERE o.ctid = x.row_id AND x.later
      AND EXISTS (SELECT 1 FROM ordered_wait w WHERE w.later)  -- gate
    RETURNING o.event_id
-- [end]
), claimed AS (
    DELETE FROM dispatcher.outbox o
    USING claimed_events c
    WHERE o.ctid = c.row_id
      AND EXISTS (SELECT 1 FROM claimed_events)  -- gate: an empty pass reads no outbox page
      AND NOT EXISTS (SELECT 1 FROM waiting x WHERE x.row_id = c.row_id)
-- [full]
      AND c.id NOT IN (SELECT event_id FROM ordered_wait)
-- [end]
    RETURNING o.event_id
-- [full]
), open_prev AS (
    -- Ordered keys (0032): the previous delivery of each key of this batch, when still
    -- open, locked FOR SHARE: delivery_record_outcomes (SKIP LOCKED) then cannot finish it unseen
    -- while this statement parks behind it; one it finished first fails the re-check.
    SELECT p.webhook_id, p.order_key
    FROM (SELECT DISTINCT m.webhook_id, m.order_key FROM matched m
          WHERE m.order_key IS NOT NULL AND m.webhook_status = 'active') kk
    CROSS JOIN LATERAL (
        SELECT max(q.sequence) AS sequence FROM dispatcher.delivery_sequence q
        WHERE q.webhook_id = kk.webhook_id AND q.order_key = kk.order_key) mx
    JOIN dispatcher.delivery_sequence p
      ON p.webhook_id = kk.webhook_id AND p.order_key = kk.order_key AND p.sequence = mx.sequence
    JOIN public.webhook_deliveries pd ON pd.id = p.delivery_id
    WHERE pd.status IN ('pending', 'retrying')
    FOR SHARE OF pd
-- [end]
), ranked AS (
    SELECT m.*, row_number() OVER (PARTITION BY m.eligible
                                   ORDER BY m.event_created_at, m.event_id, m.webhook_id) AS rn,
-- [full]
           -- Parked (0032): a keyed delivery behind an open one of its key, in this batch
           -- or before, is not due until delivery_record_outcomes (or delivery_release_parked after it)
           -- releases it, or 30 s pass (made final outside the recorder), so delivery_claim_due
           -- does not walk a blocked key's rows. The claim still checks.
           CASE WHEN m.order_key IS NOT NULL
                 AND (row_number() OVER (PARTITION BY m.webhook_id, m.order_key
                                         ORDER BY m.queued_at, m.event_created_at, m.event_id) > 1
                      OR EXISTS (SELECT 1 FROM open_prev op
                                 WHERE op.webhook_id = m.webhook_id
                                   AND op.order_key = m.order_key))
                THEN now() + interval '30 seconds' END AS parked_until
-- [lean]
           NULL::timestamptz AS parked_until
-- [end]
    FROM matched m
    WHERE m.webhook_status = 'active'
      AND NOT EXISTS (SELECT 1 FROM waiting x WHERE x.row_id = m.row_id)
-- [full]
      AND m.event_id NOT IN (SELECT event_id FROM ordered_wait)
-- [end]
), held AS (
    -- A replica that read 'disabled' just before an enable committed may hold an
    -- event after the release ran: the daemon's hold sweep (delivery_release_orphan_holds)
    -- queues it. Ids only: the event is the record.
    INSERT INTO dispatcher.held (webhook_id, event_id, org_id, event_created_at)
    SELECT m.webhook_id, m.event_id, m.org_id, m.event_created_at
    FROM matched m
    WHERE m.webhook_status = 'disabled'
      AND NOT EXISTS (SELECT 1 FROM waiting x WHERE x.row_id = m.row_id)
-- [full]
      AND m.event_id NOT IN (SELECT event_id FROM ordered_wait)
-- [end]
    ON CONFLICT DO NOTHING
), seq_counts AS (
    -- Sequence numbers (0032): one counter row per webhook, bumped once per statement
    -- (in webhook order, so two fan-outs never wait on each other in a cycle).
    SELECT webhook_id, count(*) AS n FROM ranked GROUP BY webhook_id
), seq_last AS (
    INSERT INTO dispatcher.webhook_sequences AS s (webhook_id, last)
    SELECT webhook_id, n FROM seq_counts ORDER BY webhook_id
    ON CONFLICT (webhook_id) DO UPDATE SET last = s.last + EXCLUDED.last
    RETURNING s.webhook_id, s.last
), numbered AS MATERIALIZED (
    -- Each delivery with its number and its lease, once: the delivery row, its number's row
    -- and the rows returned are all read from here, never joined back on id. Those joins
    -- (matched to inserted, to the numbers) were planned from the CTEs' row estimates (one
    -- to three rows) as nested loops, each rescanning every row per row: 2 x n^2 tuples a
    -- fan-out of n deliveries (docs/performance.md, branch drain16).
    -- The webhook's count from the window (seq_counts' n), so one join, not two.
    SELECT r.*,
           l.last - count(*) OVER (PARTITION BY r.webhook_id)
               + row_number() OVER (PARTITION BY r.webhook_id
                                    ORDER BY r.queued_at, r.event_created_at, r.event_id)
               AS sequence,
           CASE WHEN r.eligible AND r.rn <= %(claim)s
                THEN now() + make_interval(secs => %(lease)s) ELSE r.parked_until END AS claim
    FROM ranked r
    JOIN seq_last l ON l.webhook_id = r.webhook_id
), inserted AS (
    INSERT INTO public.webhook_deliveries (
        id, org_id, webhook_id, event_type, event_id, payload, request_url,
        request_headers, request_body, attempt_number, max_attempts, status, next_retry_at
    )
    SELECT id, org_id, webhook_id, left(event_type, 100), event_id, body, url,
           CASE WHEN traceparent IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('traceparent', traceparent) END,
           body_text, 1, max_attempts, 'pending', claim
    FROM numbered
    RETURNING id
), sequenced AS (
    INSERT INTO dispatcher.delivery_sequence (delivery_id, webhook_id, sequence, order_key,
                                              parked_until)
    SELECT id, webhook_id, sequence, order_key, parked_until FROM numbered
)
SELECT m.id, m.org_id, m.webhook_id, m.event_id, left(m.event_type, 100) AS event_type,
       m.body_text AS request_body, 1 AS attempt_number, m.max_attempts,
       'pending'::text AS status, m.claim,
       m.url, m.secret, m.headers, m.webhook_status, m.webhook_deleted_at,
       ws.previous_secret, ws.previous_expires_at,
       m.max_retries, m.retry_strategy, m.base_delay_seconds, m.max_delay_seconds,
       m.enable_jitter, m.enable_dlq,
       (SELECT count(*) FROM claimed) AS events_claimed,
       (SELECT count(*) FROM inserted) AS deliveries_created,
       NULL::uuid[] AS events_unreadable, m.traceparent, m.sequence,
-- [full]
       (SELECT count(*) FROM deferred) + (SELECT count(*) FROM ordered_wait) AS events_deferred,
-- [lean]
       (SELECT count(*) FROM deferred) AS events_deferred,
-- [end]
       -- an ordered key's delivery: its outcome needs the full delivery_record_outcomes
       m.order_key IS NOT NULL AS keyed, NULL::boolean AS ordered_refused
FROM numbered m
LEFT JOIN dispatcher.webhook_secrets ws ON ws.webhook_id = m.webhook_id
WHERE m.claim IS NOT NULL AND m.eligible  -- the rows created with a lease (next_retry_at)
UNION ALL
-- A marker row carrying the counts of events claimed and deliveries created, for
-- batches that produced no claimed delivery (id is null), the ids of the events
-- taken that this role could not read (they stayed in the outbox) and the count of
-- events left in the outbox for a webhook row held by someone else. ordered_refused: the
-- lean statement did nothing, as some webhook is ordered (false: it did its work).
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, (SELECT count(*) FROM claimed),
       (SELECT count(*) FROM inserted), (SELECT array_agg(event_id) FROM unreadable), NULL, NULL,
-- [full]
       (SELECT count(*) FROM deferred) + (SELECT count(*) FROM ordered_wait), NULL, false;
-- [lean]
       (SELECT count(*) FROM deferred), NULL, (SELECT g.ordered FROM gate g);
-- [end]

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

-- name: delivery_record_outcomes
-- Write a batch of attempt outcomes in one statement: the delivery rows (only
-- where the claim is still ours), the attempt history, and each webhook's streak
-- row in dispatcher.webhook_streaks (dispatcher.note_outcomes_v1, 0011) when the
-- outcomes change it (`webhooks`: how many were noted; none: no counters to apply). Nothing
-- here waits on a lock the host may hold: public.webhooks is not touched (its
-- counters follow in delivery_apply_webhook_counters) and delivery rows locked by someone
-- else are skipped and returned in `busy`, for the recorder to try again. `seq`
-- orders the outcomes of one webhook. Returns how many were recorded.
-- Lean variant (issue 12; dispatcher/queries.py): without the release of an ordered key's
-- next delivery (0032), for batches where no outcome is of a keyed delivery (the order key
-- is fixed when the delivery is made: the claim rows say `keyed`); then `finals` is empty
-- and the full statement releases nothing either.
WITH o AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS x(
        id uuid, webhook_id uuid, org_id uuid, claim timestamptz, seq integer,
        status text, outcome text, attempt integer, attempt_number integer, retry_in double precision,
        final boolean, counts boolean, success boolean, gone boolean,
        request_url text, request_headers jsonb, response_status integer,
        response_headers jsonb, response_body text, duration_ms integer,
        error_message text, error_code text, started_at timestamptz, ended_at timestamptz
    )
), mine AS (
    -- Each outcome's row by primary key, locked in id order (the outer rows are sorted and
    -- a LATERAL with FOR UPDATE is a nested loop: one probe, one lock, per outcome). Written
    -- so that no other access path exists, in any plan: the claim and status test sits in
    -- coalesce(), which neither the partial index on pending rows
    -- (dispatcher_deliveries_due_since, implied by a bare `status IN (...)`) nor an index on
    -- next_retry_at can serve. As a plain join, the generic plan psycopg's prepared statement
    -- settles on could read every pending row through that index (a bitmap scan, hash join:
    -- chosen while the table was small, kept as the backlog grew), ~4x the buffers per outcome.
    SELECT l.id
    FROM (SELECT o.id, o.claim FROM o ORDER BY o.id) s
    CROSS JOIN LATERAL (
        SELECT d.id FROM public.webhook_deliveries d
        WHERE d.id = s.id
          AND coalesce(d.next_retry_at = s.claim AND d.status IN ('pending', 'retrying'), false)
        FOR UPDATE OF d SKIP LOCKED) l
), seen AS (
    -- The rows of the outcomes not locked above, as this statement's snapshot has them, by
    -- primary key (OFFSET 0: not flattened, so nothing is pushed into the probe): for the
    -- busy and lost reports below, read only when some outcome was not written.
    SELECT o.id, o.claim, o.attempt, b.id AS row_id, b.status, b.attempt_number,
           coalesce(b.next_retry_at = o.claim AND b.status IN ('pending', 'retrying'), false)
               AS claim_held
    FROM o
    LEFT JOIN LATERAL (
        SELECT d.id, d.status, d.attempt_number, d.next_retry_at
        FROM public.webhook_deliveries d WHERE d.id = o.id OFFSET 0) b ON true
    WHERE o.id NOT IN (SELECT id FROM mine)
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
    -- The locked rows by primary key, as one array (an estimated 10 ids, not the 100 a
    -- jsonb_to_recordset is guessed at): the probes then cost less than a sequential scan of
    -- all but a tiny table, also in a generic plan made while the table was small and kept as
    -- the backlog grew (a hash join over a sequential scan of every row, per batch, otherwise).
    WHERE d.id = ANY (ARRAY(SELECT id FROM mine)) AND d.id = o.id
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
), noted AS (
    -- In webhook order, so two recorders never wait on each other's streak rows in a cycle.
    -- Successes to a healthy webhook change nothing: its streak row is clean (nothing
    -- pending, no failure counted) and its counters were written less than a second ago,
    -- so delivery_apply_webhook_counters would write nothing. Such a webhook is not noted (no
    -- streak row write, and the recorder skips delivery_apply_webhook_counters): a healthy
    -- webhook's streak stays 0 without a write per batch. Read without a lock: a failure
    -- another recorder notes meanwhile is then ordered after these successes.
    SELECT dispatcher.note_outcomes_v1(webhook_id, outs) AS ok
    FROM (SELECT d.webhook_id,
                 jsonb_agg(jsonb_build_object('success', success, 'counts', counts,
                                              'gone', gone, 'started', started_at,
                                              'ended', ended_at) ORDER BY seq) AS outs
          FROM done d WHERE counts OR success OR gone
          GROUP BY d.webhook_id
          HAVING NOT (bool_and(d.success AND NOT d.counts AND NOT d.gone) AND EXISTS (
              SELECT 1 FROM dispatcher.webhook_streaks s
              JOIN public.webhooks w ON w.id = s.webhook_id
              WHERE s.webhook_id = d.webhook_id AND NOT s.pending AND s.counted_until IS NULL
                AND coalesce(w.consecutive_failures, 0) = 0
                AND w.last_success_at >= now() - interval '1 second'
                AND w.last_triggered_at >= now() - interval '1 second'))
          ORDER BY d.webhook_id) per_hook
), dead AS MATERIALIZED (
    -- delivery.dead_lettered (0026): only the rows that turn 'dlq' pay anything here;
    -- in webhook order, as above (the rate limit locks a row per webhook).
    SELECT dispatcher.dead_lettered_v1(id, webhook_id, attempt, response_status,
                                       error_code, error_message) AS event_id
    FROM (SELECT * FROM done WHERE status = 'dlq' ORDER BY webhook_id, id OFFSET 0) dlq
-- [full]
), finals AS MATERIALIZED (
    -- Ordered keys (0032): deliveries of a key that just became final.
    SELECT o.id, k.webhook_id, k.order_key, k.sequence
    FROM done o
    JOIN dispatcher.delivery_sequence k ON k.delivery_id = o.id AND k.order_key IS NOT NULL
    WHERE o.final
), nexts AS MATERIALIZED (
    -- the delivery after each of them in its key
    SELECT f.id AS after_id, nx.delivery_id, nx.parked_until
    FROM finals f
    CROSS JOIN LATERAL (
        SELECT s.delivery_id, s.parked_until FROM dispatcher.delivery_sequence s
        WHERE s.webhook_id = f.webhook_id AND s.order_key = f.order_key
          AND s.sequence > f.sequence
        ORDER BY s.sequence LIMIT 1) nx
), released AS (
    -- The next delivery of each such key, if delivery_fan_out parked it (its next_retry_at is
    -- still the parking token), is due now. One this snapshot cannot see (a fan-out
    -- that committed while this statement ran) is left to delivery_release_parked, which the
    -- recorder runs next for the ids returned in release_later.
    UPDATE public.webhook_deliveries n SET next_retry_at = NULL
    FROM nexts nx
    -- by primary key only, as in upd (no index on status or next_retry_at can serve the
    -- test in coalesce())
    WHERE n.id = ANY (ARRAY(SELECT delivery_id FROM nexts)) AND n.id = nx.delivery_id
      AND coalesce(n.status = 'pending' AND n.next_retry_at = nx.parked_until, false)
    RETURNING n.id, nx.after_id
), rang AS (
    -- released rows are due now: ring the doorbell (delivered at commit)
    SELECT pg_notify('dispatcher_v1', 'd') FROM (SELECT 1 FROM released LIMIT 1) x
-- [end]
), lost AS (
    -- Outcomes whose claim was no longer held (neither written nor busy), told apart by
    -- the row as it was before this statement (every part of a WITH sees the same
    -- snapshot): gone; still due at the same attempt under another claim (our lease ran
    -- out and another replica retook it); or moved on by another writer (status or
    -- attempt changed: the host's deliver-webhook edge function sending the row itself,
    -- an admin action, or a replica that retook the lease and finished first).
    -- docs/host-adoption.md explains the second writer.
    SELECT s.id,
           CASE WHEN s.row_id IS NULL THEN 'deleted'
                WHEN s.status IN ('pending', 'retrying') AND s.attempt_number = s.attempt
                    THEN 'lease_retaken'
                ELSE 'changed_by_another_writer' END AS reason
    FROM seen s
    WHERE NOT s.claim_held
)
SELECT (SELECT count(*) FROM upd) AS recorded,
       (SELECT count(*) FROM noted) AS webhooks,
       -- streak changes another replica noted and has not written yet (it stopped, or the
       -- webhook row was locked): whoever records next writes them (partial index: cheap)
       EXISTS (SELECT 1 FROM dispatcher.webhook_streaks WHERE pending) AS counters_pending,
       (SELECT count(event_id) FROM dead) AS dead_lettered_published,
-- [full]
       (SELECT count(*) FROM released) AS released,
       (SELECT count(*) FROM rang) AS rang,
       ARRAY(SELECT f.id FROM finals f
             WHERE f.id NOT IN (SELECT after_id FROM released)) AS release_later,
-- [lean]
       0::bigint AS released, 0::bigint AS rang, '{}'::uuid[] AS release_later,
-- [end]
       -- still our claim, but the row is locked by another transaction: try again
       ARRAY(SELECT s.id FROM seen s WHERE s.claim_held) AS busy,
       coalesce((SELECT jsonb_agg(jsonb_build_object('id', id, 'reason', reason)) FROM lost),
                '[]'::jsonb) AS lost;

-- name: delivery_release_parked
-- Ordered keys (0032): delivery_record_outcomes' release again, in a new snapshot, for final
-- deliveries (%(ids)s) whose next one it could not see; rings the doorbell.
WITH released AS (
    UPDATE public.webhook_deliveries n SET next_retry_at = NULL
    FROM dispatcher.delivery_sequence k
    JOIN public.webhook_deliveries pd ON pd.id = k.delivery_id
    CROSS JOIN LATERAL (
        SELECT s.delivery_id, s.parked_until FROM dispatcher.delivery_sequence s
        WHERE s.webhook_id = k.webhook_id AND s.order_key = k.order_key
          AND s.sequence > k.sequence
        ORDER BY s.sequence LIMIT 1) nx
    WHERE k.delivery_id = ANY (%(ids)s::uuid[]) AND k.order_key IS NOT NULL
      AND pd.status NOT IN ('pending', 'retrying')
      AND n.id = nx.delivery_id AND n.status = 'pending' AND n.next_retry_at = nx.parked_until
    RETURNING n.id
)
SELECT count(*) AS released,
       (SELECT count(*) FROM (SELECT pg_notify('dispatcher_v1', 'd')
                              FROM (SELECT 1 FROM released LIMIT 1) x) y) AS rang
FROM released;

-- name: delivery_apply_webhook_counters
-- Write the streak rows' pending changes (delivery_record_outcomes) to public.webhooks:
-- consecutive_failures (reset on a success, then the counted steps added), the
-- timestamps, and a 410's disable. Webhook rows locked by another transaction are
-- skipped and stay pending for the next call, so no outcome ever waits on them.
-- A batch of successes to a healthy webhook changes only its timestamps: written
-- at most once a second per webhook (each write is a new row version and runs the
-- host's trigger). Failures, resets and 410s are always written.
WITH p AS (
    SELECT s.*,
           (s.add_failures > 0 OR s.gone OR s.failure_at IS NOT NULL
            OR coalesce(w.consecutive_failures, 0) <> 0
            OR w.last_success_at IS NULL OR w.last_triggered_at IS NULL
            OR w.last_triggered_at < now() - interval '1 second'
            OR w.last_success_at < now() - interval '1 second') AS write
    FROM dispatcher.webhook_streaks s
    JOIN public.webhooks w ON w.id = s.webhook_id
    WHERE s.pending
    ORDER BY s.webhook_id
    LIMIT 1000
    FOR UPDATE OF s SKIP LOCKED
), locked AS (
    SELECT w.id FROM public.webhooks w JOIN p ON p.webhook_id = w.id AND p.write
    ORDER BY w.id
    -- NO KEY UPDATE, what the UPDATE below takes anyway: a plain FOR UPDATE would conflict
    -- with the FOR KEY SHARE a concurrent fan-out takes on the rows it references, and make
    -- it leave the webhook's events in the outbox for a second (delivery_fan_out, `waiting`)
    FOR NO KEY UPDATE OF w SKIP LOCKED
), hooks AS (
    UPDATE public.webhooks w SET
        consecutive_failures = CASE WHEN p.reset THEN 0
                                    ELSE coalesce(w.consecutive_failures, 0) END + p.add_failures,
        last_triggered_at = coalesce(p.triggered_at, w.last_triggered_at),
        last_success_at = coalesce(p.success_at, w.last_success_at),
        last_failure_at = coalesce(p.failure_at, w.last_failure_at),
        status = CASE WHEN p.gone AND w.status = 'active' THEN 'disabled' ELSE w.status END
    FROM p
    WHERE w.id = p.webhook_id AND w.id IN (SELECT id FROM locked)
    RETURNING w.id
), cleared AS (
    UPDATE dispatcher.webhook_streaks s SET
        pending = false, reset = false, add_failures = 0, gone = false,
        success_at = NULL, failure_at = NULL, triggered_at = NULL
    FROM p
    WHERE s.webhook_id = p.webhook_id AND (NOT p.write OR p.webhook_id IN (SELECT id FROM hooks))
    RETURNING s.webhook_id
), orphans AS (
    -- streak rows of webhooks deleted since
    DELETE FROM dispatcher.webhook_streaks s
    WHERE s.pending AND NOT EXISTS (SELECT 1 FROM public.webhooks w WHERE w.id = s.webhook_id)
    RETURNING s.webhook_id
)
SELECT (SELECT count(*) FROM hooks) AS written,
       (SELECT count(*) FROM p) - (SELECT count(*) FROM cleared) AS waiting,
       (SELECT count(*) FROM orphans) AS orphans;

-- name: delivery_release_claims
-- Give back leased deliveries that were never attempted (shutdown): due now.
UPDATE public.webhook_deliveries d
SET next_retry_at = CASE WHEN d.status = 'pending' THEN NULL ELSE now() END
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(id uuid, claim timestamptz)
WHERE d.id = r.id AND d.next_retry_at = r.claim AND d.status IN ('pending', 'retrying');

-- name: delivery_extend_claim
-- Renew one lease from the moment this runs (clock_timestamp, not the transaction's
-- start), before sending a row whose claim statement waited on a lock. Returns the
-- new claim token; no row when the claim is no longer ours.
UPDATE public.webhook_deliveries
SET next_retry_at = clock_timestamp() + make_interval(secs => %(lease)s)
WHERE id = %(id)s AND next_retry_at = %(claim)s AND status IN ('pending', 'retrying')
RETURNING next_retry_at AS claim;

-- name: delivery_release_orphan_holds
-- Held events of webhooks that are active again: the enable's trigger released the
-- hold, but a fan-out that read the webhook as disabled before the enable committed
-- held some after it. Queued here (held rows only, not the streak: that was done).
-- Only webhooks released recently can have such rows (a fan-out is one short
-- statement; `at` is the start of the enabling transaction, a day is ample), so this
-- reads a few rows of hold_log, not every webhook.
SELECT w.id AS webhook_id, r.released, r.requeued, r.expired
FROM (SELECT DISTINCT l.webhook_id FROM dispatcher.hold_log l
      WHERE l.action = 'released' AND l.at > now() - interval '1 day') recent
JOIN public.webhooks w ON w.id = recent.webhook_id
CROSS JOIN LATERAL dispatcher.release_hold_v1(w.id, false) r
WHERE w.status = 'active' AND w.deleted_at IS NULL
  AND EXISTS (SELECT 1 FROM dispatcher.held h WHERE h.webhook_id = w.id);

-- name: delivery_webhook_now
-- A delivery that waited in the claim-ahead queue behind a slow endpoint re-reads its
-- webhook before it is sent (delivery.py, _recheck): switched off, deleted or edited since?
SELECT w.status, w.deleted_at, w.url, w.secret, w.headers::text AS headers
FROM public.webhooks w WHERE w.id = %(id)s;
