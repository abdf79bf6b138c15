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
SELECT s.calls, s.rows, s.total_exec_time, s.mean_exec_time, s.query
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

-- name: publish_one_floor
-- publish_one, and the floor pipeline's doorbell with the event id, in the same transaction
-- (bench/floor_latency.py).
SELECT p.id, pg_notify('bench_floor', p.id::text)
FROM (SELECT publish_event(%(event_type)s, gen_random_uuid(), %(payload)s::jsonb, NULL,
                           '{}'::jsonb, %(org)s) AS id) p;

-- name: outbox_clear
-- Events published for the floor alone (an org without webhooks) before the daemon starts.
DELETE FROM dispatcher.outbox;

-- name: floor_setup
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

-- name: floor_insert
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

-- name: floor_record
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
