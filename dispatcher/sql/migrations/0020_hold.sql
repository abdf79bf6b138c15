-- 0020: what a switched-off webhook gets (docs/architecture.md, "Webhook states").
--
--   inactive (a person) or soft-deleted  nothing: fan-out writes no row for it.
--   disabled (automatically)             fan-out HOLDS the event: one row here, no
--                                        host row, no body (the event is the record).
--   disabled -> active                   the hold is released (trigger below): every
--                                        held event younger than the org's
--                                        dlq_retention_days becomes a pending delivery,
--                                        and the failing streak's rows go back to
--                                        pending, oldest first; older held events are
--                                        dropped and counted.
--   disabled -> inactive / deleted       the hold is discarded (a person's choice).
--
-- The streak of a disable = the webhook's `dlq` rows, and rows failed 'Webhook is
-- not active' (in flight when it was disabled), finished (delivered_at) after the
-- later of its last success and its last release or discard (dispatcher.hold_log),
-- and created within dlq_retention_days.

CREATE TABLE dispatcher.held (
    webhook_id uuid NOT NULL REFERENCES public.webhooks (id) ON DELETE CASCADE,
    event_id uuid NOT NULL,
    org_id uuid NOT NULL,
    event_created_at timestamptz NOT NULL,
    held_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (webhook_id, event_id)
);
CREATE INDEX dispatcher_held_event_created ON dispatcher.held (event_created_at);

-- One row per end of a hold: released (the webhook was enabled again) or discarded
-- (by an operator, or by a person switching the webhook off). The counts are the
-- record of what happened, for `webhooks show` and for the operator.
CREATE TABLE dispatcher.hold_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id uuid NOT NULL REFERENCES public.webhooks (id) ON DELETE CASCADE,
    org_id uuid NOT NULL,
    action text NOT NULL CHECK (action IN ('released', 'discarded')),
    at timestamptz NOT NULL DEFAULT now(),
    released integer NOT NULL DEFAULT 0,   -- held events queued as pending deliveries
    requeued integer NOT NULL DEFAULT 0,   -- the streak's rows set back to pending
    expired integer NOT NULL DEFAULT 0,    -- held events older than dlq_retention_days (or gone)
    discarded integer NOT NULL DEFAULT 0   -- held events thrown away by a discard
);
CREATE INDEX dispatcher_hold_log_webhook ON dispatcher.hold_log (webhook_id, at DESC);
CREATE INDEX dispatcher_hold_log_at ON dispatcher.hold_log (at);  -- the daemon's sweep

-- Where the current streak starts: NULL = since the beginning.
CREATE FUNCTION dispatcher.streak_start_v1(p_webhook_id uuid, p_last_success timestamptz)
RETURNS timestamptz
LANGUAGE sql STABLE
AS $$
    SELECT greatest(p_last_success,
                    (SELECT max(l.at) FROM dispatcher.hold_log l WHERE l.webhook_id = p_webhook_id))
$$;

-- How long the org keeps what failed: dlq_retention_days clamped as the host's UI does.
CREATE FUNCTION dispatcher.dlq_retention_v1(p_org_id uuid) RETURNS interval
LANGUAGE sql STABLE
AS $$
    SELECT make_interval(days => least(greatest(coalesce(
        (SELECT rc.dlq_retention_days FROM public.integration_retry_config rc
          WHERE rc.org_id = p_org_id), 30), 1), 90))
$$;

-- The streak of a disabled webhook (above): one definition for the release and the
-- counts of hold_status.
CREATE FUNCTION dispatcher.streak_v1(p_webhook_id uuid) RETURNS SETOF uuid
LANGUAGE sql STABLE
AS $$
    SELECT d.id
    FROM public.webhooks w
    JOIN public.webhook_deliveries d ON d.webhook_id = w.id
    WHERE w.id = p_webhook_id
      AND (d.status = 'dlq'
           OR (d.status = 'failed' AND d.error_message = 'Webhook is not active'))
      AND coalesce(d.delivered_at, d.created_at)
          >= coalesce(dispatcher.streak_start_v1(w.id, w.last_success_at), '-infinity')
      AND d.created_at >= now() - dispatcher.dlq_retention_v1(w.org_id)
$$;

-- The streak, found without reading a webhook's whole history: only DLQ rows and
-- rows cut off by a disable are in it. On a large existing webhook_deliveries table,
-- create it CONCURRENTLY before migrating (same name; IF NOT EXISTS skips it then):
--   CREATE INDEX CONCURRENTLY dispatcher_deliveries_streak ON public.webhook_deliveries
--       (webhook_id, delivered_at)
--       WHERE status = 'dlq' OR (status = 'failed' AND error_message = 'Webhook is not active');
CREATE INDEX IF NOT EXISTS dispatcher_deliveries_streak
    ON public.webhook_deliveries (webhook_id, delivered_at)
    WHERE status = 'dlq' OR (status = 'failed' AND error_message = 'Webhook is not active');

-- Release an active webhook's hold: held events become pending deliveries (the
-- body fan-out builds), and with p_streak the streak's rows go back to pending
-- (attempt 1). All of them are due in the order of their events (oldest first;
-- next_retry_at a microsecond apart, so the claim order is exact). Concurrent
-- callers never queue one held event or streak row twice: DELETE ... RETURNING and
-- the status re-check under the row lock give each to one caller. Returns the
-- counts and writes them to dispatcher.hold_log (when anything happened, or always
-- with p_streak: the enable ends the streak). Runs with the caller's rights: the
-- owner's from the trigger below, the daemon's role from its sweep.
CREATE FUNCTION dispatcher.release_hold_v1(p_webhook_id uuid, p_streak boolean)
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
               OR (d.status = 'failed' AND d.error_message = 'Webhook is not active'))
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

-- Throw a webhook's hold away; the streak ends here too (its DLQ rows stay in the
-- DLQ, for the host's retry and clear buttons). Returns how many held events.
-- Caller's rights, as release_hold_v1.
CREATE FUNCTION dispatcher.discard_hold_v1(p_webhook_id uuid) RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_org uuid;
    n integer;
BEGIN
    SELECT w.org_id INTO v_org FROM public.webhooks w WHERE w.id = p_webhook_id;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    DELETE FROM dispatcher.held h WHERE h.webhook_id = p_webhook_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO dispatcher.hold_log (webhook_id, org_id, action, discarded)
    VALUES (p_webhook_id, v_org, 'discarded', n);
    RETURN n;
END
$$;

-- Whoever switches a disabled webhook back on (the host's button, the CLI, the SQL
-- admin API, a plain UPDATE) releases its hold in the same transaction; switching
-- it off by hand or soft-deleting it discards the hold. SECURITY DEFINER: the
-- host's roles need no rights on our schema (the helpers above run as the owner).
CREATE FUNCTION dispatcher.webhook_hold_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.status = 'active' AND NEW.deleted_at IS NULL THEN
        PERFORM dispatcher.release_hold_v1(NEW.id, true);
    ELSIF NEW.status IS DISTINCT FROM 'disabled' OR NEW.deleted_at IS NOT NULL THEN
        PERFORM dispatcher.discard_hold_v1(NEW.id);
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION dispatcher.webhook_hold_v1() FROM PUBLIC;

CREATE TRIGGER dispatcher_webhook_hold
    AFTER UPDATE OF status, deleted_at ON public.webhooks
    FOR EACH ROW
    WHEN (OLD.status = 'disabled' AND OLD.deleted_at IS NULL
          AND (NEW.status IS DISTINCT FROM 'disabled' OR NEW.deleted_at IS NOT NULL))
    EXECUTE FUNCTION dispatcher.webhook_hold_v1();

-- Admin API (docs/admin-api.md) ------------------------------------------------

-- Discard the webhook's held events instead of delivering them on re-enable; the
-- failing streak's DLQ rows are then left in the DLQ too. Returns how many.
CREATE FUNCTION dispatcher.discard_hold(p_org_id uuid, p_webhook_id uuid) RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM dispatcher.require_webhook(p_org_id, p_webhook_id);
    RETURN dispatcher.discard_hold_v1(p_webhook_id);
END
$$;

-- What the webhook holds now, what its re-enable would requeue from the streak,
-- and how its last hold ended.
CREATE FUNCTION dispatcher.hold_status(p_org_id uuid, p_webhook_id uuid)
RETURNS TABLE (
    held bigint,
    oldest_held_event_at timestamptz,
    streak_rows bigint,
    last_action text,
    last_action_at timestamptz,
    last_released integer,
    last_requeued integer,
    last_expired integer,
    last_discarded integer
)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    w public.webhooks;
BEGIN
    w := dispatcher.require_webhook(p_org_id, p_webhook_id);
    RETURN QUERY SELECT * FROM dispatcher.hold_status_v1(w.id);
END
$$;

CREATE FUNCTION dispatcher.hold_status_v1(p_webhook_id uuid)
RETURNS TABLE (
    held bigint,
    oldest_held_event_at timestamptz,
    streak_rows bigint,
    last_action text,
    last_action_at timestamptz,
    last_released integer,
    last_requeued integer,
    last_expired integer,
    last_discarded integer
)
LANGUAGE sql STABLE
AS $$
    SELECT h.n, h.oldest,
           CASE WHEN w.status = 'disabled'
                THEN (SELECT count(*) FROM dispatcher.streak_v1(w.id)) ELSE 0 END,
           l.action, l.at, l.released, l.requeued, l.expired, l.discarded
    FROM public.webhooks w
    CROSS JOIN LATERAL (SELECT count(*) AS n, min(x.event_created_at) AS oldest
                        FROM dispatcher.held x WHERE x.webhook_id = w.id) h
    LEFT JOIN LATERAL (SELECT * FROM dispatcher.hold_log g WHERE g.webhook_id = w.id
                       ORDER BY g.at DESC, g.id DESC LIMIT 1) l ON true
    WHERE w.id = p_webhook_id
$$;

-- recover: an event held for the webhook is not a candidate (its release queues it).
CREATE OR REPLACE FUNCTION dispatcher.recover_candidates_v1(
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
      AND NOT EXISTS (SELECT 1 FROM dispatcher.held h
                      WHERE h.webhook_id = p_webhook_id AND h.event_id = e.id)
$$;
