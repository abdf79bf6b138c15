-- 0026: the dispatcher's own lifecycle events, published through the host's
-- publish_event (6 arguments) in the transaction of the change that causes them
-- (issue 13 item 3; event types and payloads in docs/receivers.md):
--
--   webhook.disabled        a webhook goes from active to disabled (the host's trigger at
--                           10 consecutive failures, or a 410 Gone): trigger below, so it
--                           holds whoever makes the change.
--   webhook.recovered       a success resets a streak of RECOVERED_AFTER (3) or more
--                           consecutive failures to 0: trigger below.
--   delivery.dead_lettered  a delivery is exhausted into the DLQ: record_outcomes calls
--                           dead_lettered_v1 for the rows that turn 'dlq', and only those.
--
-- No feedback loops: each event carries metadata {"dispatcher": {"lifecycle": true,
-- "webhook_id": <the webhook it is about>}}; fan-out does not deliver it to that webhook
-- while it is failing (not active, or consecutive_failures > 0), and a lifecycle event
-- that itself dead-letters publishes nothing. Rate limit per webhook: at most one
-- webhook.recovered and one delivery.dead_lettered a minute; the next one carries the
-- count of those suppressed meanwhile (`suppressed`).
--
-- Publishing never makes the change fail: a refusal (missing privilege, a host trigger,
-- anything) is caught in a savepoint (EXCEPTION block), logged as a WARNING and counted
-- in dispatcher.lifecycle_limits.not_published; the change commits. delivery.dead_lettered
-- is published with the caller's rights (the daemon's role: least_privilege.sql grants
-- publish_event and the nine event columns); the webhook trigger runs as the owner. Off: the session setting
-- dispatcher.lifecycle_events = off (DISPATCHER_LIFECYCLE_EVENTS=false sets it on the
-- daemon's connections; ALTER DATABASE ... SET for everyone).

-- Per webhook and event type: the rate limit's state and the refusals. No foreign key
-- to public.webhooks on purpose (its check would lock the webhook row: see 0011).
CREATE TABLE dispatcher.lifecycle_limits (
    webhook_id uuid NOT NULL,
    event_type text NOT NULL,
    last_published_at timestamptz,
    suppressed integer NOT NULL DEFAULT 0,       -- not published (rate limit) since the last
    not_published bigint NOT NULL DEFAULT 0,     -- refused by publish_event, ever
    PRIMARY KEY (webhook_id, event_type)
);

CREATE FUNCTION dispatcher.lifecycle_enabled_v1() RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT lower(coalesce(current_setting('dispatcher.lifecycle_events', true), ''))
           NOT IN ('off', 'false', '0', 'no')
$$;

-- The host part of a URL, never its credentials, path or query:
-- https://user:pw@Hooks.Example.com:8443/x?token=1 -> hooks.example.com
CREATE FUNCTION dispatcher.url_host_v1(p_url text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT lower(substring(p_url FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#]*@)?(\[[^]/?#]*\]|[^/?#:]*)'))
$$;

-- The webhook part of a payload.
CREATE FUNCTION dispatcher.lifecycle_webhook_v1(w public.webhooks) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT jsonb_build_object('webhook_id', w.id, 'webhook_name', w.name,
                              'url_host', dispatcher.url_host_v1(w.url))
$$;

-- Publish one lifecycle event about p_webhook_id; p_limit (or null: no limit) is the
-- least time between two events of this type about this webhook. Returns the event id,
-- or null when switched off, rate-limited or refused. Never raises. `public` is on the
-- search_path (after pg_catalog) because the host's publish_event names its tables
-- (events, user_profiles) unqualified; everything here is qualified.
CREATE FUNCTION dispatcher.publish_lifecycle_v1(
    p_event_type text, p_org_id uuid, p_webhook_id uuid, p_aggregate_id uuid,
    p_payload jsonb, p_limit interval
) RETURNS uuid
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_last timestamptz;
    v_suppressed integer := 0;
    v_payload jsonb := p_payload;
    v_id uuid;
BEGIN
    IF NOT dispatcher.lifecycle_enabled_v1() THEN
        RETURN NULL;
    END IF;
    BEGIN
        IF p_limit IS NOT NULL THEN
            INSERT INTO dispatcher.lifecycle_limits (webhook_id, event_type)
            VALUES (p_webhook_id, p_event_type)
            ON CONFLICT (webhook_id, event_type) DO NOTHING;
            SELECT l.last_published_at, l.suppressed INTO v_last, v_suppressed
            FROM dispatcher.lifecycle_limits l
            WHERE l.webhook_id = p_webhook_id AND l.event_type = p_event_type
            FOR UPDATE;
            IF v_last IS NOT NULL AND v_last > now() - p_limit THEN
                UPDATE dispatcher.lifecycle_limits SET suppressed = suppressed + 1
                WHERE webhook_id = p_webhook_id AND event_type = p_event_type;
                RETURN NULL;
            END IF;
            v_payload := v_payload || jsonb_build_object('suppressed', v_suppressed);
        END IF;
        v_id := public.publish_event(
            p_event_type, p_aggregate_id, v_payload, NULL::uuid,
            jsonb_build_object('dispatcher', jsonb_build_object(
                'lifecycle', true, 'webhook_id', p_webhook_id)),
            p_org_id);
        IF p_limit IS NOT NULL THEN
            UPDATE dispatcher.lifecycle_limits SET last_published_at = now(), suppressed = 0
            WHERE webhook_id = p_webhook_id AND event_type = p_event_type;
        END IF;
        RETURN v_id;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'lifecycle event % about webhook % not published: % (SQLSTATE %)',
            p_event_type, p_webhook_id, SQLERRM, SQLSTATE;
        BEGIN
            INSERT INTO dispatcher.lifecycle_limits AS l (webhook_id, event_type, not_published)
            VALUES (p_webhook_id, p_event_type, 1)
            ON CONFLICT (webhook_id, event_type)
            DO UPDATE SET not_published = l.not_published + 1;
        EXCEPTION WHEN OTHERS THEN
            NULL;  -- a caller without rights on our schema: the warning is the record
        END;
        RETURN NULL;
    END;
END
$$;

-- delivery.dead_lettered, for one delivery record_outcomes has just turned 'dlq'.
CREATE FUNCTION dispatcher.dead_lettered_v1(
    p_delivery_id uuid, p_webhook_id uuid, p_attempts integer, p_response_status integer,
    p_error_code text, p_error_message text
) RETURNS uuid
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    w public.webhooks;
    v_event_id uuid;
    v_event_type text;
    v_created timestamptz;
BEGIN
    IF NOT dispatcher.lifecycle_enabled_v1() THEN
        RETURN NULL;
    END IF;
    SELECT d.event_id, d.event_type, d.created_at INTO v_event_id, v_event_type, v_created
    FROM public.webhook_deliveries d WHERE d.id = p_delivery_id;
    -- A lifecycle event that dead-letters publishes nothing further.
    IF v_event_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM public.events e
        WHERE e.id = v_event_id AND e.metadata #> '{dispatcher,lifecycle}' = 'true'::jsonb)
    THEN
        RETURN NULL;
    END IF;
    SELECT * INTO w FROM public.webhooks WHERE id = p_webhook_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN dispatcher.publish_lifecycle_v1(
        'delivery.dead_lettered', w.org_id, w.id, p_delivery_id,
        dispatcher.lifecycle_webhook_v1(w) || jsonb_build_object(
            'delivery_id', p_delivery_id, 'event_id', v_event_id, 'event_type', v_event_type,
            'attempts', p_attempts, 'last_status', p_response_status,
            'last_error_code', p_error_code, 'last_error', left(p_error_message, 500),
            'created_at', v_created, 'dead_lettered_at', now()),
        interval '1 minute');
END
$$;

-- webhook.disabled and webhook.recovered, whoever changes the webhook row. SECURITY
-- DEFINER, as the hold trigger (0020): the host's roles need no rights on our schema, and
-- a change a host role makes publishes too (as the owner of this function).
CREATE FUNCTION dispatcher.webhook_lifecycle_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_error record;
BEGIN
    IF NEW.status = 'disabled' AND OLD.status = 'active' THEN
        -- The last failed attempt: recorded in the transaction that set last_failure_at
        -- (record_outcomes), found by the attempted_at index from there.
        SELECT a.error_message, a.response_status, a.outcome INTO v_error
        FROM dispatcher.attempts a
        WHERE a.webhook_id = NEW.id AND NEW.last_failure_at IS NOT NULL
          AND a.attempted_at >= NEW.last_failure_at
          AND a.attempted_at <= NEW.last_failure_at + interval '1 minute'
          AND a.outcome <> 'success'
        ORDER BY a.attempted_at DESC, a.id DESC
        LIMIT 1;
        PERFORM dispatcher.publish_lifecycle_v1(
            'webhook.disabled', NEW.org_id, NEW.id, NEW.id,
            dispatcher.lifecycle_webhook_v1(NEW) || jsonb_build_object(
                'reason', CASE WHEN coalesce(NEW.consecutive_failures, 0) >= 10
                               THEN 'consecutive_failures' ELSE 'gone' END,
                'consecutive_failures', coalesce(NEW.consecutive_failures, 0),
                'last_error', left(v_error.error_message, 500),
                'last_status', v_error.response_status,
                'last_failure_at', NEW.last_failure_at,
                'last_success_at', NEW.last_success_at,
                'disabled_at', now()),
            NULL);
    ELSIF coalesce(OLD.consecutive_failures, 0) >= 3 AND coalesce(NEW.consecutive_failures, 0) = 0
          AND NEW.last_success_at IS DISTINCT FROM OLD.last_success_at THEN
        PERFORM dispatcher.publish_lifecycle_v1(
            'webhook.recovered', NEW.org_id, NEW.id, NEW.id,
            dispatcher.lifecycle_webhook_v1(NEW) || jsonb_build_object(
                'failures_before', OLD.consecutive_failures,
                'last_failure_at', OLD.last_failure_at,
                'recovered_at', NEW.last_success_at),
            interval '1 minute');
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION dispatcher.webhook_lifecycle_v1() FROM PUBLIC;

-- Not `UPDATE OF status`: the host's BEFORE trigger sets status without the UPDATE
-- naming it. The WHEN clause keeps every other update of a webhook free.
CREATE TRIGGER dispatcher_webhook_lifecycle
    AFTER UPDATE ON public.webhooks
    FOR EACH ROW
    WHEN ((NEW.status = 'disabled' AND OLD.status = 'active' AND NEW.deleted_at IS NULL)
          OR (coalesce(OLD.consecutive_failures, 0) >= 3
              AND coalesce(NEW.consecutive_failures, 0) = 0
              AND NEW.last_success_at IS DISTINCT FROM OLD.last_success_at))
    EXECUTE FUNCTION dispatcher.webhook_lifecycle_v1();
