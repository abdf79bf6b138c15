-- 0038: one home for the "not active" text in SQL (issue 15, "one home per rule").
--
-- A delivery whose webhook is not active (or is soft-deleted) is not sent: it ends
-- `failed` with error_message 'Webhook is not active' (HOST-SCHEMA.md; the daemon writes it,
-- dispatcher/transitions.py NOT_ACTIVE), and such rows are part of a disable's streak
-- (0020_hold.sql). The text is written once here, in dispatcher.not_active_v1; the functions
-- of 0020 that spelled it out are replaced below, unchanged but for the call.
-- tests/integration/test_rules_sql.py holds it to transitions.NOT_ACTIVE and to the predicate
-- of the index dispatcher_deliveries_streak (0020), which keeps its literal: rebuilding an
-- index of the host's largest table to reword it is not worth a migration. An IMMUTABLE SQL
-- constant is folded at planning, so the streak's queries still match that partial index.

CREATE FUNCTION dispatcher.not_active_v1() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT 'Webhook is not active'::text
$$;

-- 0020: the streak of a disabled webhook.
CREATE OR REPLACE FUNCTION dispatcher.streak_v1(p_webhook_id uuid) RETURNS SETOF uuid
LANGUAGE sql STABLE
AS $$
    SELECT d.id
    FROM public.webhooks w
    JOIN public.webhook_deliveries d ON d.webhook_id = w.id
    WHERE w.id = p_webhook_id
      AND (d.status = 'dlq'
           OR (d.status = 'failed' AND d.error_message = dispatcher.not_active_v1()))
      AND coalesce(d.delivered_at, d.created_at)
          >= coalesce(dispatcher.streak_start_v1(w.id, w.last_success_at), '-infinity')
      AND d.created_at >= now() - dispatcher.dlq_retention_v1(w.org_id)
$$;

-- 0020: release an active webhook's hold (see there).
CREATE OR REPLACE FUNCTION dispatcher.release_hold_v1(p_webhook_id uuid, p_streak boolean)
RETURNS TABLE (released integer, requeued integer, expired integer)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    w public.webhooks;
    v_keep interval;
    v_released integer;
    v_requeued integer;
    v_expired integer;
BEGIN
    SELECT * INTO w FROM public.webhooks WHERE id = p_webhook_id;
    IF NOT FOUND OR w.status IS DISTINCT FROM 'active' OR w.deleted_at IS NOT NULL THEN
        RETURN QUERY SELECT 0, 0, 0;
        RETURN;
    END IF;
    v_keep := dispatcher.dlq_retention_v1(w.org_id);
    WITH taken AS (
        DELETE FROM dispatcher.held h WHERE h.webhook_id = w.id
        RETURNING h.event_id, h.event_created_at
    ), streak AS (
        SELECT d.id, d.created_at
        FROM public.webhook_deliveries d
        WHERE p_streak AND d.id IN (SELECT dispatcher.streak_v1(w.id))
        FOR UPDATE OF d
    ), live AS (
        SELECT e.id, e.org_id, e.event_type, e.created_at,
               dispatcher.delivery_body_v1(e.id, e.event_type, e.created_at, e.org_id,
                                           e.aggregate_id, e.payload) AS body
        FROM taken t
        JOIN public.events e ON e.id = t.event_id
        WHERE t.event_created_at >= now() - v_keep
    ), ordered AS (
        SELECT x.kind, x.ref, row_number() OVER (ORDER BY x.at, x.ref) AS rn
        FROM (SELECT 'e' AS kind, l.id AS ref, l.created_at AS at FROM live l
              UNION ALL
              SELECT 'd', s.id, s.created_at FROM streak s) x
    ), ins AS (
        INSERT INTO public.webhook_deliveries (
            org_id, webhook_id, event_type, event_id, payload, request_url, request_headers,
            request_body, attempt_number, max_attempts, status, next_retry_at
        )
        SELECT l.org_id, w.id, left(l.event_type, 100), l.id, l.body, w.url, '{}'::jsonb,
               l.body::text, 1, dispatcher.max_attempts_v1(w.org_id), 'pending',
               now() + (o.rn - 1) * interval '1 microsecond'
        FROM live l JOIN ordered o ON o.kind = 'e' AND o.ref = l.id
        RETURNING 1
    ), upd AS (
        UPDATE public.webhook_deliveries d
        SET status = 'pending', attempt_number = 1,
            max_attempts = dispatcher.max_attempts_v1(w.org_id),
            next_retry_at = now() + (o.rn - 1) * interval '1 microsecond'
        FROM ordered o
        WHERE o.kind = 'd' AND d.id = o.ref
          -- re-checked on the locked row: a DLQ row the host cleared meanwhile stays
          AND (d.status = 'dlq'
               OR (d.status = 'failed' AND d.error_message = dispatcher.not_active_v1()))
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM ins)::integer, (SELECT count(*) FROM upd)::integer,
           ((SELECT count(*) FROM taken) - (SELECT count(*) FROM live))::integer
    INTO v_released, v_requeued, v_expired;
    IF p_streak OR v_released + v_requeued + v_expired > 0 THEN
        INSERT INTO dispatcher.hold_log (webhook_id, org_id, action, released, requeued, expired)
        VALUES (w.id, w.org_id, 'released', v_released, v_requeued, v_expired);
    END IF;
    IF v_released + v_requeued > 0 THEN
        -- Rows with a next_retry_at do not ring the delivery trigger: ring here.
        PERFORM pg_notify('dispatcher_v1', 'd');
    END IF;
    RETURN QUERY SELECT v_released, v_requeued, v_expired;
END
$$;
