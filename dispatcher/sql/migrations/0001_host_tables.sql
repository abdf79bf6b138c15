-- 0001: the host's tables, created only when absent (standalone mode).
--
-- On a host database these already exist, with more columns, foreign keys and
-- row-level security. Every statement here is IF NOT EXISTS or guarded, so a
-- host object is never replaced, dropped or retyped. Columns, types and
-- defaults follow ../shared/HOST-SCHEMA.md.

CREATE TABLE IF NOT EXISTS public.organizations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL,
    slug text UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO public.organizations (id, name, slug)
SELECT '00000000-0000-0000-0000-000000000001', 'Default organization', 'default'
WHERE NOT EXISTS (
    SELECT 1 FROM public.organizations WHERE id = '00000000-0000-0000-0000-000000000001'
);

CREATE TABLE IF NOT EXISTS public.events (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    event_type text NOT NULL,
    event_category text NOT NULL,
    aggregate_id uuid,
    payload jsonb NOT NULL DEFAULT '{}'::jsonb,
    metadata jsonb DEFAULT '{}'::jsonb,
    user_id uuid,
    user_email text,
    org_id uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    status text DEFAULT 'pending',
    retry_count integer DEFAULT 0,
    max_retries integer DEFAULT 3,
    next_retry_at timestamptz,
    error_message text,
    processed_at timestamptz,
    failed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- publish_event(): the host's 6-argument form. Created only when no function of
-- that signature exists, so the host's own definition is never replaced.
DO $do$
BEGIN
    IF to_regprocedure('public.publish_event(text, uuid, jsonb, uuid, jsonb, uuid)') IS NULL THEN
        EXECUTE $fn$
        CREATE FUNCTION public.publish_event(
            p_event_type text,
            p_aggregate_id uuid,
            p_payload jsonb,
            p_user_id uuid DEFAULT NULL,
            p_metadata jsonb DEFAULT '{}'::jsonb,
            p_org_id uuid DEFAULT NULL
        ) RETURNS uuid
        LANGUAGE plpgsql
        AS $body$
        DECLARE
            v_id uuid;
            v_org uuid;
            v_category text := split_part(p_event_type, '.', 1);
        BEGIN
            v_org := coalesce(p_org_id, '00000000-0000-0000-0000-000000000001'::uuid);
            INSERT INTO public.events (event_type, event_category, aggregate_id, payload,
                                       metadata, user_id, org_id)
            VALUES (p_event_type, v_category, p_aggregate_id, coalesce(p_payload, '{}'::jsonb),
                    coalesce(p_metadata, '{}'::jsonb), p_user_id, v_org)
            RETURNING id INTO v_id;
            PERFORM pg_notify(v_category, json_build_object(
                'event_id', v_id, 'event_type', p_event_type, 'aggregate_id', p_aggregate_id,
                'org_id', v_org, 'timestamp', now())::text);
            PERFORM pg_notify('events', json_build_object(
                'event_id', v_id, 'event_type', p_event_type, 'aggregate_id', p_aggregate_id,
                'org_id', v_org, 'timestamp', now())::text);
            RETURN v_id;
        END
        $body$
        $fn$;
    END IF;
END
$do$;

-- webhooks, and with it the host's auto-disable rule: crossing from below 10 to
-- 10 or more consecutive failures disables the webhook; re-enabling resets the
-- counter. Both only when the table is absent: a host database has its own trigger.
DO $do$
BEGIN
    IF to_regclass('public.webhooks') IS NOT NULL THEN
        RETURN;
    END IF;
    CREATE TABLE public.webhooks (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        org_id uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
        name varchar(100) NOT NULL,
        description text,
        url text NOT NULL,
        -- 64 lowercase hex characters from two random UUIDs (244 random bits).
        secret varchar(64) NOT NULL
            DEFAULT replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
        events text[] NOT NULL DEFAULT '{}',
        headers jsonb DEFAULT '{}'::jsonb,
        status varchar(20) NOT NULL DEFAULT 'active',
        consecutive_failures integer DEFAULT 0,
        last_triggered_at timestamptz,
        last_success_at timestamptz,
        last_failure_at timestamptz,
        created_by uuid,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        deleted_at timestamptz
    );

    CREATE FUNCTION public.webhooks_auto_disable() RETURNS trigger
    LANGUAGE plpgsql AS $body$
    BEGIN
        IF coalesce(OLD.consecutive_failures, 0) < 10
           AND coalesce(NEW.consecutive_failures, 0) >= 10
           AND NEW.status = 'active' THEN
            NEW.status := 'disabled';
        END IF;
        IF NEW.status = 'active' AND OLD.status IS DISTINCT FROM 'active' THEN
            NEW.consecutive_failures := 0;
        END IF;
        RETURN NEW;
    END
    $body$;

    CREATE TRIGGER webhooks_auto_disable
        BEFORE UPDATE ON public.webhooks
        FOR EACH ROW EXECUTE FUNCTION public.webhooks_auto_disable();
END
$do$;

CREATE TABLE IF NOT EXISTS public.webhook_deliveries (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    webhook_id uuid NOT NULL REFERENCES public.webhooks (id) ON DELETE CASCADE,
    event_type varchar(100) NOT NULL,
    event_id uuid,
    payload jsonb NOT NULL,
    request_url text NOT NULL,
    request_headers jsonb NOT NULL DEFAULT '{}'::jsonb,
    request_body text NOT NULL,
    response_status integer,
    response_headers jsonb,
    response_body text,
    duration_ms integer,
    attempt_number integer DEFAULT 1,
    max_attempts integer DEFAULT 3,
    status varchar(20) NOT NULL DEFAULT 'pending',
    error_message text,
    error_code varchar(50),
    next_retry_at timestamptz,
    delivered_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.integration_retry_config (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL UNIQUE REFERENCES public.organizations (id) ON DELETE CASCADE,
    max_retries integer NOT NULL DEFAULT 3,
    retry_strategy varchar(20) NOT NULL DEFAULT 'exponential',
    base_delay_seconds integer NOT NULL DEFAULT 5,
    max_delay_seconds integer NOT NULL DEFAULT 300,
    enable_jitter boolean NOT NULL DEFAULT true,
    enable_dlq boolean NOT NULL DEFAULT true,
    dlq_retention_days integer NOT NULL DEFAULT 30,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
