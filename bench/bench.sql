-- Named queries of the benchmark (loaded by bench/infra.py with dispatcher.queries.parse).
-- They play the host (orgs, webhooks, publish_event) and probe progress; none of them is
-- run by the daemon.

-- name: create_org
INSERT INTO organizations (id, name, slug) VALUES (%(id)s, %(name)s, %(slug)s);

-- name: create_webhook
INSERT INTO webhooks (org_id, name, url, secret, events)
VALUES (%(org)s, %(name)s, %(url)s, %(secret)s, %(events)s);

-- name: publish_backlog
-- publish_event() once per row, events spread round-robin over the given orgs.
SELECT count(publish_event(
    %(event_type)s, gen_random_uuid(), %(payload)s::jsonb || jsonb_build_object('seq', g),
    NULL, '{}'::jsonb, (%(orgs)s::uuid[])[1 + g %% cardinality(%(orgs)s::uuid[])]
)) AS published
FROM generate_series(%(lo)s::int, %(hi)s::int) AS g;

-- name: publish_one
SELECT publish_event(%(event_type)s, gen_random_uuid(), %(payload)s::jsonb, NULL, '{}'::jsonb,
                     %(org)s) AS id;

-- name: progress
SELECT count(*) FILTER (WHERE status = 'success') AS success,
       count(*) AS total,
       (SELECT count(*) FROM dispatcher.outbox) AS outbox
FROM webhook_deliveries;

-- name: outbox_count
SELECT count(*) AS n FROM dispatcher.outbox;

-- name: statuses
SELECT status, count(*) AS n FROM webhook_deliveries GROUP BY status ORDER BY status;

-- name: body_size
SELECT avg(octet_length(request_body))::int AS avg_bytes FROM webhook_deliveries;

-- name: delivery_events
SELECT id::text AS id, event_id::text AS event_id FROM webhook_deliveries;

-- name: prepare_backlog
-- Before a drain: settle the statistics the claim queries plan with.
ANALYZE events, webhooks, webhook_deliveries, dispatcher.outbox;

-- name: intake_trigger_off
ALTER TABLE events DISABLE TRIGGER dispatcher_intake;

-- name: intake_trigger_on
ALTER TABLE events ENABLE TRIGGER dispatcher_intake;

-- name: xact_commit
SELECT xact_commit FROM pg_stat_database WHERE datname = current_database();

-- name: statements_reset
SELECT pg_stat_statements_reset();

-- name: statements_by_daemon
-- Top-level statements the daemon ran in one database (pg_stat_statements.track = top).
SELECT s.calls, s.rows, s.total_exec_time, s.mean_exec_time, s.query,
       s.shared_blks_hit + s.shared_blks_read AS blocks, s.wal_bytes
FROM pg_stat_statements s
JOIN pg_database d ON d.oid = s.dbid
JOIN pg_roles r ON r.oid = s.userid
WHERE d.datname = %(db)s AND r.rolname = %(role)s
ORDER BY s.total_exec_time DESC;

-- name: ceiling_setup
DROP TABLE IF EXISTS ceiling_queue, ceiling_out;
CREATE TABLE ceiling_queue (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status text NOT NULL DEFAULT 'pending',
    body text NOT NULL
);
CREATE INDEX ceiling_queue_pending ON ceiling_queue (id) WHERE status = 'pending';
CREATE TABLE ceiling_out (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue_id bigint NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- name: ceiling_fill
INSERT INTO ceiling_queue (body) SELECT %(body)s FROM generate_series(1, %(rows)s::int);

-- name: ceiling_batch
-- The PostgreSQL ceiling: claim a batch with SKIP LOCKED, update it and insert one row per
-- claimed row, in one statement.
WITH claimed AS (
    SELECT id FROM ceiling_queue WHERE status = 'pending'
    ORDER BY id LIMIT %(batch)s FOR UPDATE SKIP LOCKED
), updated AS (
    UPDATE ceiling_queue q SET status = 'done' FROM claimed c WHERE q.id = c.id
    RETURNING q.id, q.body
)
INSERT INTO ceiling_out (queue_id, body) SELECT id, body FROM updated;

-- name: publish_backlog_keyed
-- publish_backlog with an aggregate_id: each org's events cycle through %(keys)s keys
-- (the ordered scenario: ordering is per webhook and key).
SELECT count(publish_event(
    %(event_type)s,
    md5('key-' || ((g / cardinality(%(orgs)s::uuid[])) %% %(keys)s))::uuid,
    %(payload)s::jsonb || jsonb_build_object('seq', g),
    NULL, '{}'::jsonb, (%(orgs)s::uuid[])[1 + g %% cardinality(%(orgs)s::uuid[])]
)) AS published
FROM generate_series(%(lo)s::int, %(hi)s::int) AS g;

-- name: order_all_webhooks
-- Mark every webhook ordered through the SQL admin API (0032).
SELECT count(dispatcher.set_webhook_ordered(w.org_id, w.id, true)) AS ordered
FROM public.webhooks w;

-- name: floor_webhook
-- The durable floor (bench/floor.py): its one webhook, read once at start, and the
-- max_attempts delivery_fan_out would write for its org (same policy function).
SELECT w.url, w.secret,
       (dispatcher.retry_policy_v1(max_retries => rc.max_retries)).max_retries + 1 AS max_attempts
FROM public.webhooks w
LEFT JOIN public.integration_retry_config rc ON rc.org_id = w.org_id
WHERE w.id = %(webhook)s;

-- name: floor_take
-- The floor's one statement per batch (two writes per delivery row): take %(batch)s events
-- off the outbox (oldest first through its index, SKIP LOCKED) and insert their delivery
-- rows already leased, the body built by the daemon's own function (the same bytes).
WITH floor_batch AS MATERIALIZED (
    SELECT o.ctid AS row_id FROM dispatcher.outbox o
    ORDER BY o.created_at LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), taken AS (
    DELETE FROM dispatcher.outbox o WHERE o.ctid = ANY (ARRAY(SELECT row_id FROM floor_batch))
    RETURNING o.event_id
), ev AS (
    SELECT e.id, e.org_id, e.event_type,
           dispatcher.delivery_body_v1(e.id, e.event_type, e.created_at, e.org_id,
                                       e.aggregate_id, e.payload) AS body
    FROM taken t JOIN public.events e ON e.id = t.event_id
    OFFSET 0  -- a fence: the body is built once
)
INSERT INTO public.webhook_deliveries (
    org_id, webhook_id, event_type, event_id, payload, request_url, request_headers,
    request_body, attempt_number, max_attempts, status, next_retry_at
)
SELECT ev.org_id, %(webhook)s, left(ev.event_type, 100), ev.id, ev.body, %(url)s, '{}'::jsonb,
       ev.body::text, 1, %(max_attempts)s, 'pending', now() + make_interval(secs => %(lease)s)
FROM ev
RETURNING id, request_body;

-- name: floor_take_pending
-- floor3, first write: floor_take's rows inserted pending (due now, not leased).
WITH floor_pending AS MATERIALIZED (
    SELECT o.ctid AS row_id FROM dispatcher.outbox o
    ORDER BY o.created_at LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), taken AS (
    DELETE FROM dispatcher.outbox o WHERE o.ctid = ANY (ARRAY(SELECT row_id FROM floor_pending))
    RETURNING o.event_id
), ev AS (
    SELECT e.id, e.org_id, e.event_type,
           dispatcher.delivery_body_v1(e.id, e.event_type, e.created_at, e.org_id,
                                       e.aggregate_id, e.payload) AS body
    FROM taken t JOIN public.events e ON e.id = t.event_id
    OFFSET 0
)
INSERT INTO public.webhook_deliveries (
    org_id, webhook_id, event_type, event_id, payload, request_url, request_headers,
    request_body, attempt_number, max_attempts, status
)
SELECT ev.org_id, %(webhook)s, left(ev.event_type, 100), ev.id, ev.body, %(url)s, '{}'::jsonb,
       ev.body::text, 1, %(max_attempts)s, 'pending'
FROM ev;

-- name: floor_lease
-- floor3, second write: lease %(batch)s due rows found through the due index
-- (dispatcher_deliveries_due_since), as delivery_claim_due finds them.
WITH due AS (
    SELECT d.id FROM public.webhook_deliveries d
    WHERE d.status IN ('pending', 'retrying') AND coalesce(d.next_retry_at, d.created_at) <= now()
    ORDER BY coalesce(d.next_retry_at, d.created_at)
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
UPDATE public.webhook_deliveries d SET next_retry_at = now() + make_interval(secs => %(lease)s)
FROM due WHERE d.id = due.id
RETURNING d.id, d.request_body;

-- name: floor_lease_wide
-- floor_lease, returning what the daemon's request and outcome row need of each row (its
-- event, org, type and claim token): bench/floor.py --real request or outcome, without the real
-- claim (delivery_claim_due returns these itself).
WITH due AS (
    SELECT d.id FROM public.webhook_deliveries d
    WHERE d.status IN ('pending', 'retrying') AND coalesce(d.next_retry_at, d.created_at) <= now()
    ORDER BY coalesce(d.next_retry_at, d.created_at)
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
UPDATE public.webhook_deliveries d SET next_retry_at = now() + make_interval(secs => %(lease)s)
FROM due WHERE d.id = due.id
RETURNING d.id, d.request_body, d.event_id, d.org_id, d.event_type, d.next_retry_at AS claim;

-- name: floor_record
-- The floor's outcomes, one statement per batch (last write of each row). A failure is left
-- `retrying` 5 s later for someone else (the floor has no retry path).
UPDATE public.webhook_deliveries d
SET status = o.status, response_status = o.response_status, response_body = o.response_body,
    duration_ms = o.duration_ms,
    delivered_at = CASE WHEN o.status = 'success' THEN now() END,
    next_retry_at = CASE WHEN o.status = 'success' THEN NULL
                         ELSE now() + interval '5 seconds' END
FROM unnest(%(ids)s::uuid[], %(statuses)s::text[], %(codes)s::int[], %(bodies)s::text[],
            %(ms)s::int[]) AS o (id, status, response_status, response_body, duration_ms)
WHERE d.id = o.id;

-- name: webhook_ids
SELECT id::text AS id FROM webhooks ORDER BY created_at, id;

-- name: publish_one_floor
-- publish_one, and the floor pipeline's doorbell with the event id, in the same transaction
-- (bench/floor_latency.py).
SELECT p.id, pg_notify('bench_floor', p.id::text)
FROM (SELECT publish_event(%(event_type)s, gen_random_uuid(), %(payload)s::jsonb, NULL,
                           '{}'::jsonb, %(org)s) AS id) p;

-- name: outbox_clear
-- Events published for the floor alone (an org without webhooks) before the daemon starts.
DELETE FROM dispatcher.outbox;

-- name: latency_floor_setup
CREATE TABLE IF NOT EXISTS bench_floor_deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL,
    request_body text NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    response_status integer,
    heard_at double precision,  -- time.time() when the NOTIFY was heard
    sent_at double precision,   -- time.time() right before the POST
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);

-- name: latency_floor_insert
-- The floor's one statement before the POST: its delivery row, the body built as the
-- daemon's fan-out builds it.
INSERT INTO bench_floor_deliveries (event_id, request_body, heard_at)
SELECT e.id,
       dispatcher.delivery_body_v1(e.id, e.event_type, e.created_at, e.org_id, e.aggregate_id,
                                   e.payload)::text,
       %(heard)s
FROM public.events e
WHERE e.id = %(event)s::uuid
RETURNING id, request_body;

-- name: latency_floor_record
UPDATE bench_floor_deliveries
SET status = %(status)s, response_status = %(code)s, sent_at = %(sent)s, delivered_at = now()
WHERE id = %(id)s;

-- name: floor_timeline
-- The floor's stages per event (epoch seconds).
SELECT event_id::text AS event_id, heard_at AS heard,
       extract(epoch FROM created_at)::float8 AS written, sent_at AS sent,
       extract(epoch FROM delivered_at)::float8 AS recorded, status
FROM bench_floor_deliveries;

-- name: delivery_timeline
-- The daemon's stages per delivery (epoch seconds): the fan-out statement's start (the
-- row's created_at is its now()) and the recorder's statement (delivered_at).
SELECT id::text AS id, event_id::text AS event_id,
       extract(epoch FROM created_at)::float8 AS written,
       extract(epoch FROM delivered_at)::float8 AS recorded
FROM webhook_deliveries;

-- name: listener_pids
-- The daemon's LISTEN connections (bench/infra.py listener_pids): their last statement.
SELECT pid FROM pg_stat_activity
WHERE usename = %(role)s AND backend_type = 'client backend' AND query ILIKE 'LISTEN %%';

-- name: pg_counters
-- Cumulative counters of this database (bench/infra.py pg_counters), subtracted by the
-- drain: WAL, the delivery tables' writes and maintenance runs, PL/pgSQL calls (trigger
-- functions among them; track_functions is on while statements are tracked), commits,
-- buffers, and the background writer's cleaned buffers.
WITH t AS (
    SELECT CASE WHEN relname = 'webhook_deliveries' THEN 'deliveries'
                WHEN schemaname = 'dispatcher' AND relname = 'outbox' THEN 'outbox'
                WHEN schemaname = 'dispatcher' AND relname = 'delivery_sequence' THEN 'sequence'
                WHEN schemaname = 'dispatcher' AND relname LIKE 'attempts%%' THEN 'attempts'
                ELSE 'other' END AS tab, s.*
    FROM pg_stat_user_tables s
), f AS (
    SELECT funcname, calls, self_time FROM pg_stat_user_functions
)
SELECT (SELECT wal_records FROM pg_stat_wal) AS wal_records,
       (SELECT wal_fpi FROM pg_stat_wal) AS wal_fpi,
       (SELECT wal_bytes FROM pg_stat_wal) AS wal_bytes,
       (SELECT buffers_clean FROM pg_stat_bgwriter) AS bgwriter_buffers_clean,
       d.xact_commit, d.xact_rollback, d.blks_hit + d.blks_read AS blocks,
       d.tup_inserted, d.tup_updated, d.tup_deleted,
       (SELECT sum(n_tup_hot_upd) FROM t WHERE tab = 'deliveries') AS deliveries_hot_updates,
       (SELECT sum(n_tup_upd) FROM t WHERE tab = 'deliveries') AS deliveries_updates,
       (SELECT sum(autovacuum_count + vacuum_count) FROM t WHERE tab = 'deliveries')
           AS deliveries_vacuums,
       (SELECT sum(autoanalyze_count + analyze_count) FROM t WHERE tab = 'deliveries')
           AS deliveries_analyzes,
       (SELECT sum(autovacuum_count + vacuum_count) FROM t WHERE tab = 'outbox') AS outbox_vacuums,
       (SELECT sum(autoanalyze_count + analyze_count) FROM t WHERE tab = 'outbox') AS outbox_analyzes,
       (SELECT sum(autovacuum_count + vacuum_count) FROM t WHERE tab = 'sequence')
           AS sequence_vacuums,
       (SELECT sum(autovacuum_count + vacuum_count + autoanalyze_count + analyze_count)
        FROM t WHERE tab IN ('attempts', 'other')) AS other_maintenance_runs,
       (SELECT sum(calls) FROM f WHERE funcname = 'delivery_due_v1') AS delivery_due_calls,
       (SELECT sum(self_time) FROM f WHERE funcname = 'delivery_due_v1') AS delivery_due_ms,
       (SELECT sum(calls) FROM f WHERE funcname = 'host_default_max_attempts_v1')
           AS default_max_attempts_calls,
       (SELECT sum(self_time) FROM f WHERE funcname = 'host_default_max_attempts_v1')
           AS default_max_attempts_ms,
       (SELECT sum(calls) FROM f) AS function_calls,
       (SELECT sum(self_time) FROM f) AS function_ms
FROM pg_stat_database d WHERE d.datname = current_database();

-- name: daemon_waits
-- The daemon's backends running a statement now, by wait event (bench/drain.py).
SELECT coalesce(wait_event_type || ':' || wait_event, 'running') AS wait, count(*) AS n
FROM pg_stat_activity
WHERE usename = %(role)s AND state = 'active' AND backend_type = 'client backend'
  AND query NOT ILIKE 'LISTEN %%'
GROUP BY 1;
