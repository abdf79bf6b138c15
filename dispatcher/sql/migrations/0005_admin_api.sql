-- 0005: the SQL admin API, for the host's own admin code (reference: docs/admin-api.md).
--
-- Every function takes the organization id first and refuses rows of another
-- organization. Errors carry a SQLSTATE the caller can branch on:
--   P0002 no_data_found                    unknown (or soft-deleted) id
--   42501 insufficient_privilege           the row belongs to another organization
--   22004 null_value_not_allowed           a required argument is NULL
--   22023 invalid_parameter_value          an argument is out of range
--   55000 object_not_in_prerequisite_state the webhook or delivery is in the wrong state
-- Functions are SECURITY INVOKER: the caller needs rights on the tables they touch.
-- Names without a version suffix are the public API; `*_v1` helpers are what the
-- dispatcher's own queries depend on.

-- The body of an event's delivery: one definition for fan_out (sql/queries.sql)
-- and recover_webhook below. A plain SQL expression so that it is inlined.
CREATE FUNCTION dispatcher.delivery_body_v1(
    p_event_id uuid,
    p_event_type text,
    p_created_at timestamptz,
    p_org_id uuid,
    p_aggregate_id uuid,
    p_payload jsonb
) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT jsonb_build_object(
        'id', p_event_id, 'type', p_event_type, 'event', p_event_type,
        'timestamp', to_char(p_created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'org_id', p_org_id, 'aggregate_id', p_aggregate_id, 'data', p_payload
    )
$$;

-- Attempts a new delivery of the organization gets: max_retries + 1 (HOST-SCHEMA.md).
CREATE FUNCTION dispatcher.max_attempts_v1(p_org_id uuid) RETURNS integer
LANGUAGE sql STABLE
AS $$
    SELECT least(greatest(coalesce(
        (SELECT rc.max_retries FROM public.integration_retry_config rc WHERE rc.org_id = p_org_id),
        3), 1), 10) + 1
$$;

-- Guards shared by the functions below ---------------------------------------

CREATE FUNCTION dispatcher.require_org(p_org_id uuid) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_org_id IS NULL THEN
        RAISE EXCEPTION 'an organization id is required'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM public.organizations o WHERE o.id = p_org_id) THEN
        RAISE EXCEPTION 'organization % does not exist', p_org_id
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;

-- The webhook, when it exists, is not soft-deleted and belongs to the organization.
CREATE FUNCTION dispatcher.require_webhook(p_org_id uuid, p_webhook_id uuid)
RETURNS public.webhooks
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    w public.webhooks;
BEGIN
    PERFORM dispatcher.require_org(p_org_id);
    IF p_webhook_id IS NULL THEN
        RAISE EXCEPTION 'a webhook id is required' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO w FROM public.webhooks WHERE id = p_webhook_id;
    IF NOT FOUND OR w.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION 'webhook % does not exist', p_webhook_id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF w.org_id <> p_org_id THEN
        RAISE EXCEPTION 'webhook % does not belong to organization %', p_webhook_id, p_org_id
            USING ERRCODE = 'insufficient_privilege', SCHEMA = 'dispatcher';
    END IF;
    RETURN w;
END
$$;

CREATE FUNCTION dispatcher.require_active(w public.webhooks) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF w.status IS DISTINCT FROM 'active' THEN
        RAISE EXCEPTION 'webhook % is % (not active): enable it first', w.id, w.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
END
$$;

CREATE FUNCTION dispatcher.require_delivery(p_org_id uuid, p_delivery_id uuid)
RETURNS public.webhook_deliveries
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d public.webhook_deliveries;
BEGIN
    PERFORM dispatcher.require_org(p_org_id);
    IF p_delivery_id IS NULL THEN
        RAISE EXCEPTION 'a delivery id is required' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO d FROM public.webhook_deliveries WHERE id = p_delivery_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'delivery % does not exist', p_delivery_id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF d.org_id <> p_org_id THEN
        RAISE EXCEPTION 'delivery % does not belong to organization %', p_delivery_id, p_org_id
            USING ERRCODE = 'insufficient_privilege', SCHEMA = 'dispatcher';
    END IF;
    RETURN d;
END
$$;

-- Filters of the DLQ functions: the webhook and any listed delivery must be the
-- organization's; the window must not be empty.
CREATE FUNCTION dispatcher.check_dlq_filter(
    p_org_id uuid, p_webhook_id uuid, p_since timestamptz, p_until timestamptz,
    p_delivery_ids uuid[]
) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id uuid;
BEGIN
    PERFORM dispatcher.require_org(p_org_id);
    IF p_webhook_id IS NOT NULL THEN
        PERFORM dispatcher.require_webhook(p_org_id, p_webhook_id);
    END IF;
    IF p_since IS NOT NULL AND p_until IS NOT NULL AND p_since >= p_until THEN
        RAISE EXCEPTION 'the window is empty: since (%) is not before until (%)', p_since, p_until
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH v_id IN ARRAY coalesce(p_delivery_ids, '{}') LOOP
        PERFORM dispatcher.require_delivery(p_org_id, v_id);
    END LOOP;
END
$$;

-- Replay ----------------------------------------------------------------------

-- A new pending delivery with the same event, payload and exact body as the
-- given one (a new id, so receivers see a new webhook-id). Returns the new id.
CREATE FUNCTION dispatcher.replay_delivery(p_org_id uuid, p_delivery_id uuid)
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
    RETURN v_id;
END
$$;

-- Dead-letter queue -----------------------------------------------------------

-- Put the organization's DLQ items matching every given filter back to
-- `pending` (attempt 1, due now), as the host's retry button does. Items whose
-- webhook is not active stay in the DLQ (sending them would only fail them):
-- they are counted in `skipped_inactive`. The window applies to created_at.
CREATE FUNCTION dispatcher.retry_dlq(
    p_org_id uuid,
    p_webhook_id uuid DEFAULT NULL,
    p_since timestamptz DEFAULT NULL,
    p_until timestamptz DEFAULT NULL,
    p_delivery_ids uuid[] DEFAULT NULL
) RETURNS TABLE (retried integer, skipped_inactive integer)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM dispatcher.check_dlq_filter(p_org_id, p_webhook_id, p_since, p_until, p_delivery_ids);
    RETURN QUERY
    WITH matched AS (
        SELECT d.id, (w.status = 'active' AND w.deleted_at IS NULL) AS active
        FROM public.webhook_deliveries d
        JOIN public.webhooks w ON w.id = d.webhook_id
        WHERE d.org_id = p_org_id AND d.status = 'dlq'
          AND (p_webhook_id IS NULL OR d.webhook_id = p_webhook_id)
          AND (p_since IS NULL OR d.created_at >= p_since)
          AND (p_until IS NULL OR d.created_at < p_until)
          AND (p_delivery_ids IS NULL OR d.id = ANY (p_delivery_ids))
        FOR UPDATE OF d
    ), upd AS (
        UPDATE public.webhook_deliveries d
        SET status = 'pending', attempt_number = 1, next_retry_at = NULL
        FROM matched m
        WHERE d.id = m.id AND m.active
        RETURNING d.id
    )
    SELECT (SELECT count(*) FROM upd)::integer,
           (SELECT count(*) FROM matched WHERE NOT active)::integer;
END
$$;

-- Set the organization's DLQ items matching every given filter to `failed`, as
-- the host's clear button does. Returns how many were cleared.
CREATE FUNCTION dispatcher.clear_dlq(
    p_org_id uuid,
    p_webhook_id uuid DEFAULT NULL,
    p_since timestamptz DEFAULT NULL,
    p_until timestamptz DEFAULT NULL,
    p_delivery_ids uuid[] DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
BEGIN
    PERFORM dispatcher.check_dlq_filter(p_org_id, p_webhook_id, p_since, p_until, p_delivery_ids);
    UPDATE public.webhook_deliveries d
    SET status = 'failed'
    WHERE d.org_id = p_org_id AND d.status = 'dlq'
      AND (p_webhook_id IS NULL OR d.webhook_id = p_webhook_id)
      AND (p_since IS NULL OR d.created_at >= p_since)
      AND (p_until IS NULL OR d.created_at < p_until)
      AND (p_delivery_ids IS NULL OR d.id = ANY (p_delivery_ids));
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Recover a webhook's window --------------------------------------------------

-- Events of the organization created in [since, until) that match the webhook's
-- patterns and were never delivered to it: no `success` row, none in flight
-- (`pending`, `retrying`) and not still waiting in the outbox (fan-out will
-- create theirs). Rows `failed` while the webhook was off, `dlq` rows and
-- events with no row at all are all candidates.
CREATE FUNCTION dispatcher.recover_candidates_v1(
    p_org_id uuid, p_webhook_id uuid, p_patterns text[], p_since timestamptz, p_until timestamptz
) RETURNS SETOF public.events
LANGUAGE sql STABLE
AS $$
    SELECT e.*
    FROM public.events e
    WHERE e.org_id = p_org_id
      AND e.created_at >= p_since AND e.created_at < p_until
      AND dispatcher.matches_any(p_patterns, e.event_type)
      AND NOT EXISTS (
          SELECT 1 FROM public.webhook_deliveries d
          WHERE d.webhook_id = p_webhook_id AND d.event_id = e.id
            AND d.status IN ('success', 'pending', 'retrying'))
      AND NOT EXISTS (SELECT 1 FROM dispatcher.outbox o WHERE o.event_id = e.id)
$$;

-- Re-deliver every candidate event (above) to the webhook: one new pending row
-- each, with the same body fan-out builds. The webhook's DLQ rows for those
-- events are cleared (set to `failed`) so a later DLQ retry cannot send them a
-- second time. With p_dry_run nothing is written: the counts say what would be.
-- until defaults to now; the window has no other limit.
CREATE FUNCTION dispatcher.recover_webhook(
    p_org_id uuid,
    p_webhook_id uuid,
    p_since timestamptz,
    p_until timestamptz DEFAULT NULL,
    p_dry_run boolean DEFAULT false
) RETURNS TABLE (queued integer, dlq_superseded integer)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    w public.webhooks;
    v_until timestamptz := coalesce(p_until, now());
    v_max integer;
BEGIN
    w := dispatcher.require_webhook(p_org_id, p_webhook_id);
    IF p_since IS NULL THEN
        RAISE EXCEPTION 'the start of the window (since) is required'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_since >= v_until THEN
        RAISE EXCEPTION 'the window is empty: since (%) is not before until (%)', p_since, v_until
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(p_dry_run, false) THEN
        RETURN QUERY
        SELECT count(*)::integer,
               (SELECT count(*) FROM public.webhook_deliveries d
                WHERE d.webhook_id = w.id AND d.status = 'dlq' AND d.event_id IN (
                    SELECT c.id FROM dispatcher.recover_candidates_v1(
                        p_org_id, w.id, w.events, p_since, v_until) c))::integer
        FROM dispatcher.recover_candidates_v1(p_org_id, w.id, w.events, p_since, v_until);
        RETURN;
    END IF;
    PERFORM dispatcher.require_active(w);
    v_max := dispatcher.max_attempts_v1(p_org_id);
    RETURN QUERY
    WITH todo AS (
        SELECT c.id, c.org_id, c.event_type,
               dispatcher.delivery_body_v1(c.id, c.event_type, c.created_at, c.org_id,
                                           c.aggregate_id, c.payload) AS body
        FROM dispatcher.recover_candidates_v1(p_org_id, w.id, w.events, p_since, v_until) c
    ), ins AS (
        INSERT INTO public.webhook_deliveries (
            org_id, webhook_id, event_type, event_id, payload, request_url, request_headers,
            request_body, attempt_number, max_attempts, status
        )
        SELECT t.org_id, w.id, left(t.event_type, 100), t.id, t.body, w.url, '{}'::jsonb,
               t.body::text, 1, v_max, 'pending'
        FROM todo t
        RETURNING 1
    ), superseded AS (
        UPDATE public.webhook_deliveries d
        SET status = 'failed'
        WHERE d.webhook_id = w.id AND d.status = 'dlq' AND d.event_id IN (SELECT t.id FROM todo t)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM ins)::integer, (SELECT count(*) FROM superseded)::integer;
END
$$;

-- Test ping -------------------------------------------------------------------

-- A pending `webhook.test` delivery, as the host's "Send test webhook" inserts:
-- body {"event": "webhook.test", "test": true, "timestamp", "data"}. p_data
-- replaces the default data object. Returns the delivery id; the daemon sends it.
CREATE FUNCTION dispatcher.send_test(p_org_id uuid, p_webhook_id uuid, p_data jsonb DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    w public.webhooks;
    v_body jsonb;
    v_id uuid;
BEGIN
    w := dispatcher.require_webhook(p_org_id, p_webhook_id);
    PERFORM dispatcher.require_active(w);
    v_body := jsonb_build_object(
        'event', 'webhook.test',
        'test', true,
        'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'data', coalesce(p_data, jsonb_build_object(
            'message', 'This is a test webhook from webhook-dispatcher',
            'webhook_id', w.id, 'webhook_name', w.name))
    );
    INSERT INTO public.webhook_deliveries (
        org_id, webhook_id, event_type, payload, request_url, request_headers, request_body,
        attempt_number, max_attempts, status
    ) VALUES (
        p_org_id, w.id, 'webhook.test', v_body, w.url, '{}'::jsonb, v_body::text,
        1, dispatcher.max_attempts_v1(p_org_id), 'pending'
    )
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

-- Secret rotation -------------------------------------------------------------

-- Give the webhook a new secret (64 lowercase hex characters: generated, or
-- p_new_secret) and keep signing with the old one too until now() + p_grace
-- (0 to 30 days), in dispatcher.webhook_secrets. Only one previous secret is
-- kept: rotating again replaces it with the secret being rotated out.
CREATE FUNCTION dispatcher.rotate_secret(
    p_org_id uuid,
    p_webhook_id uuid,
    p_grace interval DEFAULT interval '24 hours',
    p_new_secret text DEFAULT NULL
) RETURNS TABLE (new_secret text, previous_expires_at timestamptz)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    w public.webhooks;
    v_new text;
    v_expires timestamptz;
BEGIN
    PERFORM dispatcher.require_webhook(p_org_id, p_webhook_id);
    SELECT * INTO w FROM public.webhooks WHERE id = p_webhook_id FOR UPDATE;
    IF p_grace IS NULL THEN
        RAISE EXCEPTION 'the grace period is required (0 to stop signing with the old secret now)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_grace < interval '0' OR p_grace > interval '30 days' THEN
        RAISE EXCEPTION 'the grace period % is out of range (0 to 30 days)', p_grace
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- 256 bits from the server's strong random source, without needing pgcrypto.
    v_new := coalesce(p_new_secret, encode(sha256(
        uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())
        || uuid_send(gen_random_uuid())), 'hex'));
    IF v_new !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'the new secret must be 64 lowercase hexadecimal characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_new = w.secret THEN
        RAISE EXCEPTION 'the new secret is the current one'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_expires := now() + p_grace;
    UPDATE public.webhooks SET secret = v_new, updated_at = now() WHERE id = w.id;
    INSERT INTO dispatcher.webhook_secrets AS s
        (webhook_id, previous_secret, previous_expires_at, rotated_at)
    VALUES (w.id, w.secret, v_expires, now())
    ON CONFLICT (webhook_id) DO UPDATE
        SET previous_secret = EXCLUDED.previous_secret,
            previous_expires_at = EXCLUDED.previous_expires_at,
            rotated_at = EXCLUDED.rotated_at;
    RETURN QUERY SELECT v_new, v_expires;
END
$$;

-- Stats -----------------------------------------------------------------------

-- One row of figures; p_org_id NULL means every organization (operator use:
-- dispatcher.stats_all()). Due = pending or retrying whose time has come.
CREATE FUNCTION dispatcher.stats_v1(p_org_id uuid)
RETURNS TABLE (
    webhooks_active bigint,
    webhooks_inactive bigint,
    webhooks_disabled bigint,
    deliveries_pending bigint,
    deliveries_retrying bigint,
    deliveries_success bigint,
    deliveries_failed bigint,
    deliveries_dlq bigint,
    deliveries_due bigint,
    oldest_due_at timestamptz,
    outbox_events bigint
)
LANGUAGE sql STABLE
AS $$
    WITH hooks AS (
        SELECT
            count(*) FILTER (WHERE w.status = 'active') AS active,
            count(*) FILTER (WHERE w.status = 'inactive') AS inactive,
            count(*) FILTER (WHERE w.status = 'disabled') AS disabled
        FROM public.webhooks w
        WHERE w.deleted_at IS NULL AND (p_org_id IS NULL OR w.org_id = p_org_id)
    ), dels AS (
        SELECT
            count(*) FILTER (WHERE d.status = 'pending') AS pending,
            count(*) FILTER (WHERE d.status = 'retrying') AS retrying,
            count(*) FILTER (WHERE d.status = 'success') AS success,
            count(*) FILTER (WHERE d.status = 'failed') AS failed,
            count(*) FILTER (WHERE d.status = 'dlq') AS dlq
        FROM public.webhook_deliveries d
        WHERE p_org_id IS NULL OR d.org_id = p_org_id
    ), due AS (
        SELECT count(*) AS n, min(coalesce(d.next_retry_at, d.created_at)) AS oldest
        FROM public.webhook_deliveries d
        WHERE d.status IN ('pending', 'retrying')
          AND coalesce(d.next_retry_at, '-infinity'::timestamptz) <= now()
          AND (p_org_id IS NULL OR d.org_id = p_org_id)
    ), outbox AS (
        SELECT count(*) AS n
        FROM dispatcher.outbox o
        WHERE p_org_id IS NULL
           OR EXISTS (SELECT 1 FROM public.events e WHERE e.id = o.event_id AND e.org_id = p_org_id)
    )
    SELECT hooks.active, hooks.inactive, hooks.disabled,
           dels.pending, dels.retrying, dels.success, dels.failed, dels.dlq,
           due.n, due.oldest, outbox.n
    FROM hooks, dels, due, outbox
$$;

-- The organization's figures: webhooks by status, deliveries by status (pending
-- and retrying included), deliveries due now and the oldest due time, events of
-- the organization still waiting in the outbox. DLQ size = deliveries_dlq.
CREATE FUNCTION dispatcher.stats(p_org_id uuid)
RETURNS TABLE (
    webhooks_active bigint,
    webhooks_inactive bigint,
    webhooks_disabled bigint,
    deliveries_pending bigint,
    deliveries_retrying bigint,
    deliveries_success bigint,
    deliveries_failed bigint,
    deliveries_dlq bigint,
    deliveries_due bigint,
    oldest_due_at timestamptz,
    outbox_events bigint
)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM dispatcher.require_org(p_org_id);
    RETURN QUERY SELECT * FROM dispatcher.stats_v1(p_org_id);
END
$$;

-- The same figures over every organization (for operators, not tenants).
CREATE FUNCTION dispatcher.stats_all()
RETURNS TABLE (
    webhooks_active bigint,
    webhooks_inactive bigint,
    webhooks_disabled bigint,
    deliveries_pending bigint,
    deliveries_retrying bigint,
    deliveries_success bigint,
    deliveries_failed bigint,
    deliveries_dlq bigint,
    deliveries_due bigint,
    oldest_due_at timestamptz,
    outbox_events bigint
)
LANGUAGE sql STABLE
AS $$
    SELECT * FROM dispatcher.stats_v1(NULL)
$$;

-- Deliveries with their webhook's name -----------------------------------------

-- What the host's DLQ page reads: every webhook_deliveries column plus
-- webhook_name, webhook_url and webhook_status. Filter on org_id. On PostgreSQL
-- 15+ it is security_invoker, so the host's row-level security applies to it as
-- to the tables; on older servers it runs with its owner's rights.
DO $do$
BEGIN
    EXECUTE format(
        'CREATE VIEW dispatcher.deliveries_with_webhook %s AS '
        'SELECT d.*, w.name AS webhook_name, w.url AS webhook_url, w.status AS webhook_status '
        'FROM public.webhook_deliveries d LEFT JOIN public.webhooks w ON w.id = d.webhook_id',
        CASE WHEN current_setting('server_version_num')::integer >= 150000
             THEN 'WITH (security_invoker = true)' ELSE '' END);
END
$do$;

-- recover_webhook reads an organization's events by time. On a large existing
-- events table, create this index CONCURRENTLY before migrating (same name).
CREATE INDEX IF NOT EXISTS dispatcher_events_org_created ON public.events (org_id, created_at);
