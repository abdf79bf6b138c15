-- 0032: ordered delivery per entity and per-webhook sequence numbers (issue 13,
-- items 1 and 2; docs/receivers.md "Order and sequence numbers").
--
-- Sequence numbers. Every delivery fan-out creates gets the next number of its
-- webhook, contiguous from 1 in the order the events were matched to it (the order
-- fan-out took them from the outbox, oldest outbox row first; see "Commit order").
-- The counter is one dispatcher row per webhook, bumped once per webhook per fan-out
-- statement: fan-outs to different webhooks never wait on each other, and the host's
-- webhooks rows are never locked. The number lives beside the delivery, in
-- dispatcher.delivery_sequence (no host column), and is sent as X-InTime-Sequence.
-- A replay through the dispatcher (replay_delivery, replay_from_sequence) keeps the
-- original's number; rows that did not come from fan-out carry none (a test ping,
-- a row the host inserts itself, a held event released when a webhook is enabled).
--
-- Ordering. An ordered webhook's deliveries carry their event's aggregate_id as
-- order_key (events without one are unordered; deliveries fanned out before the
-- webhook was marked ordered have no key). "Earlier" is the lower sequence number.
-- A keyed delivery is claimable only when the previous delivery of its key to the same
-- webhook (the highest lower number) is not pending or retrying: it must be final
-- (success, failed or dlq). Enforced in claim_due and in fan_out's
-- lease-at-once (which never leases a keyed row), so replicas cannot break it and it
-- survives restarts. A lower number is always visible to whoever sees a higher one:
-- numbers are taken under the webhook's counter row lock, held to commit.
--
-- Commit order. The outbox holds committed events only, and fan-out takes them oldest
-- first by the outbox row's created_at, now clock_timestamp() in the publisher's
-- transaction (below) instead of its start: a host transaction that waited for another
-- one's lock on the same entity queues its event after it, and two events published one
-- after the other in one transaction keep their order. Within one fan-out, numbers
-- follow that order. Across replicas, fan_out keeps the numbers in the order the rows
-- were taken: a fan-out that finds older outbox rows taken by another one still in
-- progress leaves its events that go to an ordered webhook with a key in the outbox for
-- the next round, rather than number them first (queries.sql, fan_out, `contended`).

-- Outbox rows carry the time they were written (see above); the outbox is still
-- taken oldest first by it.
ALTER TABLE dispatcher.outbox ALTER COLUMN created_at SET DEFAULT clock_timestamp();

CREATE TABLE dispatcher.webhook_settings (
    webhook_id uuid PRIMARY KEY REFERENCES public.webhooks (id) ON DELETE CASCADE,
    ordered boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- No foreign key: inserting a referencing row would take a KEY SHARE lock on the
-- host's webhook row. A counter of a deleted webhook is a few bytes, never read.
CREATE TABLE dispatcher.webhook_sequences (
    webhook_id uuid PRIMARY KEY,
    last bigint NOT NULL
);

CREATE TABLE dispatcher.delivery_sequence (
    delivery_id uuid PRIMARY KEY,  -- the delivery; the foreign key is added below when it can be
    webhook_id uuid NOT NULL,
    sequence bigint NOT NULL,
    order_key uuid,
    -- fan_out parks a keyed delivery behind an open one of its key (next_retry_at = this,
    -- the token); record_outcomes makes it due when that one becomes final
    parked_until timestamptz
);
-- A delivery's number goes with it (ON DELETE CASCADE) when webhook_deliveries.id is unique
-- on its own. A host that partitions webhook_deliveries by time has a primary key that
-- includes the partition key, which a foreign key cannot reference: there, retention
-- deletes the numbers of the deliveries it purges (purge_finished), and numbers of rows the
-- host deletes itself stay behind (a few bytes each, never read: docs/host-contract.md).
DO $fk$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_index i
        WHERE i.indrelid = 'public.webhook_deliveries'::regclass AND i.indisunique
          AND i.indnkeyatts = 1
          AND i.indkey[0] = (SELECT a.attnum FROM pg_attribute a
                             WHERE a.attrelid = 'public.webhook_deliveries'::regclass
                               AND a.attname = 'id')
    ) THEN
        ALTER TABLE dispatcher.delivery_sequence
            ADD CONSTRAINT delivery_sequence_delivery_id_fkey FOREIGN KEY (delivery_id)
            REFERENCES public.webhook_deliveries (id) ON DELETE CASCADE;
    END IF;
END
$fk$;

-- deliveries_since, replay_from_sequence (a replay shares its original's number)
CREATE INDEX dispatcher_delivery_sequence_hook ON dispatcher.delivery_sequence
    (webhook_id, sequence);
-- the claim's "is an earlier delivery of this key still open?"
CREATE INDEX dispatcher_delivery_sequence_key ON dispatcher.delivery_sequence
    (webhook_id, order_key, sequence) WHERE order_key IS NOT NULL;

-- Is this keyed delivery free to go: the previous delivery of its key to this webhook
-- (the highest lower number; a replay shares its original's number) is not pending or
-- retrying. Only the previous one is read, whatever the key's history: each delivery
-- went only once its own previous one was final, so that covers every earlier one
-- (an operator's DLQ retry or replay of an older number reopens only that one). One
-- definition for the claim and the tests.
CREATE FUNCTION dispatcher.order_free_v1(p_webhook_id uuid, p_order_key uuid, p_sequence bigint)
RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT p_order_key IS NULL OR NOT EXISTS (
        SELECT 1
        FROM dispatcher.delivery_sequence p
        JOIN public.webhook_deliveries pd ON pd.id = p.delivery_id
        WHERE p.webhook_id = p_webhook_id AND p.order_key = p_order_key
          AND p.sequence = (SELECT max(q.sequence) FROM dispatcher.delivery_sequence q
                             WHERE q.webhook_id = p_webhook_id AND q.order_key = p_order_key
                               AND q.sequence < p_sequence)
          AND pd.status IN ('pending', 'retrying'))
$$;

-- Mark a webhook ordered (true) or not (false), refusing other orgs' webhooks.
-- Applies to events fanned out from now on.
CREATE FUNCTION dispatcher.set_webhook_ordered(p_org_id uuid, p_webhook_id uuid,
                                               p_ordered boolean)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM dispatcher.require_webhook(p_org_id, p_webhook_id);
    IF p_ordered IS NULL THEN
        RAISE EXCEPTION 'ordered must be true or false' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    INSERT INTO dispatcher.webhook_settings (webhook_id, ordered)
    VALUES (p_webhook_id, p_ordered)
    ON CONFLICT (webhook_id) DO UPDATE SET ordered = EXCLUDED.ordered, updated_at = now();
    RETURN p_ordered;
END
$$;

-- A webhook's deliveries numbered after p_after_sequence, lowest first (a replay
-- is listed beside its original, with the same number), at most p_limit (1-1000).
CREATE FUNCTION dispatcher.deliveries_since(p_org_id uuid, p_webhook_id uuid,
                                            p_after_sequence bigint, p_limit int)
RETURNS TABLE (sequence bigint, delivery_id uuid, event_id uuid, event_type text,
               status text, attempt_number int, created_at timestamptz,
               delivered_at timestamptz, order_key uuid)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    PERFORM dispatcher.require_webhook(p_org_id, p_webhook_id);
    IF p_after_sequence IS NULL OR p_after_sequence < 0 THEN
        RAISE EXCEPTION 'after_sequence must be 0 or more, got %', p_after_sequence
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 1000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 1000, got %', p_limit
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT s.sequence, d.id, d.event_id, d.event_type::text, d.status::text,
           coalesce(d.attempt_number, 1), d.created_at, d.delivered_at, s.order_key
    FROM dispatcher.delivery_sequence s
    JOIN public.webhook_deliveries d ON d.id = s.delivery_id
    WHERE s.webhook_id = p_webhook_id AND s.sequence > p_after_sequence
    ORDER BY s.sequence, d.created_at, d.id
    LIMIT p_limit;
END
$$;

-- Send again every numbered delivery of a webhook from p_from_sequence on (at most
-- p_limit numbers, lowest first): for each number, a new pending row with its first
-- delivery's event and exact body, the same number and key, so the receiver sees the
-- same webhook-id (derived from event and webhook) and ordered keys go out in order.
-- Numbers with a delivery still pending or retrying are skipped (it will be sent).
CREATE FUNCTION dispatcher.replay_from_sequence(p_org_id uuid, p_webhook_id uuid,
                                                p_from_sequence bigint, p_limit int)
RETURNS TABLE (replayed int, skipped_open int, last_sequence bigint)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    w public.webhooks;
BEGIN
    w := dispatcher.require_webhook(p_org_id, p_webhook_id);
    PERFORM dispatcher.require_active(w);
    IF p_from_sequence IS NULL OR p_from_sequence < 1 THEN
        RAISE EXCEPTION 'from_sequence must be 1 or more, got %', p_from_sequence
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 100000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 100000, got %', p_limit
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH numbers AS (
        SELECT s.sequence, min(s.order_key::text)::uuid AS order_key,
               bool_or(d.status IN ('pending', 'retrying')) AS open,
               (array_agg(d.id ORDER BY d.created_at, d.id))[1] AS first_id
        FROM dispatcher.delivery_sequence s
        JOIN public.webhook_deliveries d ON d.id = s.delivery_id
        WHERE s.webhook_id = w.id AND s.sequence >= p_from_sequence
        GROUP BY s.sequence
        ORDER BY s.sequence
        LIMIT p_limit
    ), copies AS (
        SELECT gen_random_uuid() AS id, n.sequence, n.order_key, d.org_id,
               d.webhook_id, d.event_type, d.event_id, d.payload, d.request_body
        FROM numbers n
        JOIN public.webhook_deliveries d ON d.id = n.first_id
        WHERE NOT n.open
    ), ins AS (
        INSERT INTO public.webhook_deliveries (
            id, org_id, webhook_id, event_type, event_id, payload, request_url,
            request_headers, request_body, attempt_number, max_attempts, status, next_retry_at
        )
        SELECT c.id, c.org_id, c.webhook_id, c.event_type, c.event_id, c.payload, w.url,
               '{}'::jsonb, c.request_body, 1, dispatcher.max_attempts_v1(c.org_id), 'pending',
               now() + (row_number() OVER (ORDER BY c.sequence) - 1) * interval '1 microsecond'
        FROM copies c
        RETURNING id
    ), numbered AS (
        INSERT INTO dispatcher.delivery_sequence (delivery_id, webhook_id, sequence, order_key)
        SELECT c.id, c.webhook_id, c.sequence, c.order_key
        FROM copies c JOIN ins ON ins.id = c.id
        RETURNING sequence
    )
    SELECT (SELECT count(*) FROM numbered)::int,
           (SELECT count(*) FROM numbers WHERE open)::int,
           (SELECT max(sequence) FROM numbers);
    PERFORM pg_notify('dispatcher_v1', 'd');
END
$$;

-- replay_delivery (0005) now keeps the original's number and key.
CREATE OR REPLACE FUNCTION dispatcher.replay_delivery(p_org_id uuid, p_delivery_id uuid)
RETURNS uuid
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d public.webhook_deliveries;
    w public.webhooks;
    v_id uuid;
BEGIN
    d := dispatcher.require_delivery(p_org_id, p_delivery_id);
    IF d.status IN ('pending', 'retrying') THEN
        RAISE EXCEPTION 'delivery % is still %: it will be attempted, there is nothing to replay',
            p_delivery_id, d.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    w := dispatcher.require_webhook(p_org_id, d.webhook_id);
    PERFORM dispatcher.require_active(w);
    INSERT INTO public.webhook_deliveries (
        org_id, webhook_id, event_type, event_id, payload, request_url, request_headers,
        request_body, attempt_number, max_attempts, status
    ) VALUES (
        d.org_id, d.webhook_id, d.event_type, d.event_id, d.payload, w.url, '{}'::jsonb,
        d.request_body, 1, dispatcher.max_attempts_v1(d.org_id), 'pending'
    )
    RETURNING id INTO v_id;
    INSERT INTO dispatcher.delivery_sequence (delivery_id, webhook_id, sequence, order_key)
    SELECT v_id, s.webhook_id, s.sequence, s.order_key
    FROM dispatcher.delivery_sequence s WHERE s.delivery_id = p_delivery_id;
    RETURN v_id;
END
$$;
