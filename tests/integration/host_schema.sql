-- A host-like database, as the host's own migrations leave it: extra columns,
-- foreign keys to organizations/user_profiles, RLS with policies, the host's own
-- publish_event (both overloads) and its own auto-disable trigger.
CREATE TABLE organizations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL,
    slug text UNIQUE,
    plan text DEFAULT 'free',
    settings jsonb DEFAULT '{}'::jsonb,
    created_at timestamptz DEFAULT now()
);
INSERT INTO organizations (id, name, slug) VALUES
    ('00000000-0000-0000-0000-000000000001', 'Default', 'default');

CREATE TABLE user_profiles (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    auth_id uuid UNIQUE,
    org_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    email text
);

CREATE TABLE events (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    event_type text NOT NULL,
    event_category text NOT NULL,
    aggregate_id uuid,
    payload jsonb NOT NULL DEFAULT '{}'::jsonb,
    metadata jsonb DEFAULT '{}'::jsonb,
    user_id uuid REFERENCES user_profiles(id),
    user_email text,
    org_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    status text DEFAULT 'pending',
    retry_count integer DEFAULT 0,
    max_retries integer DEFAULT 3,
    next_retry_at timestamptz,
    error_message text,
    processed_at timestamptz,
    failed_at timestamptz,
    severity text DEFAULT 'info',
    entity_type text,
    correlation_id uuid,
    idempotency_key text UNIQUE,
    occurred_at timestamptz DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION publish_event(p_event_type text, p_aggregate_id uuid, p_payload jsonb,
                              p_user_id uuid DEFAULT NULL, p_metadata jsonb DEFAULT '{}'::jsonb)
RETURNS uuid LANGUAGE plpgsql AS $$
BEGIN
    RETURN publish_event(p_event_type, p_aggregate_id, p_payload, p_user_id, p_metadata, NULL);
END $$;

CREATE FUNCTION publish_event(p_event_type text, p_aggregate_id uuid, p_payload jsonb,
                              p_user_id uuid, p_metadata jsonb, p_org_id uuid)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE v_id uuid; v_org uuid; v_cat text := split_part(p_event_type, '.', 1);
BEGIN
    v_org := coalesce(p_org_id, (SELECT org_id FROM user_profiles WHERE id = p_user_id),
                      '00000000-0000-0000-0000-000000000001');
    INSERT INTO events (event_type, event_category, aggregate_id, payload, metadata, user_id,
                        org_id, severity)
    VALUES (p_event_type, v_cat, p_aggregate_id, p_payload, p_metadata, p_user_id, v_org, 'info')
    RETURNING id INTO v_id;
    PERFORM pg_notify(v_cat, json_build_object('event_id', v_id)::text);
    PERFORM pg_notify('events', json_build_object('event_id', v_id, 'event_type', p_event_type,
        'aggregate_id', p_aggregate_id, 'org_id', v_org, 'timestamp', now())::text);
    RETURN v_id;
END $$;

CREATE TABLE webhooks (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name varchar(100) NOT NULL,
    description text,
    url text NOT NULL,
    secret varchar(64) NOT NULL,
    events text[] NOT NULL DEFAULT '{}',
    headers jsonb DEFAULT '{}'::jsonb,
    status varchar(20) NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'inactive', 'disabled')),
    consecutive_failures integer DEFAULT 0,
    last_triggered_at timestamptz,
    last_success_at timestamptz,
    last_failure_at timestamptz,
    created_by uuid REFERENCES user_profiles(id),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    tags text[] DEFAULT '{}'
);

CREATE FUNCTION check_webhook_failures() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.consecutive_failures >= 10 AND coalesce(OLD.consecutive_failures, 0) < 10 THEN
        NEW.status := 'disabled';
    END IF;
    IF NEW.status = 'active' AND OLD.status <> 'active' THEN
        NEW.consecutive_failures := 0;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER trigger_check_webhook_failures BEFORE UPDATE ON webhooks
    FOR EACH ROW EXECUTE FUNCTION check_webhook_failures();

CREATE TABLE webhook_deliveries (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    webhook_id uuid NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_type varchar(100) NOT NULL,
    event_id uuid,
    payload jsonb NOT NULL,
    request_url text NOT NULL,
    request_headers jsonb NOT NULL,
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
CREATE INDEX idx_webhook_deliveries_webhook ON webhook_deliveries(webhook_id);

CREATE TABLE integration_retry_config (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL UNIQUE REFERENCES organizations(id) ON DELETE CASCADE,
    max_retries integer DEFAULT 3 CHECK (max_retries BETWEEN 1 AND 10),
    retry_strategy varchar(20) DEFAULT 'exponential',
    base_delay_seconds integer DEFAULT 5,
    max_delay_seconds integer DEFAULT 300,
    enable_jitter boolean DEFAULT true,
    enable_dlq boolean DEFAULT true,
    dlq_retention_days integer DEFAULT 30,
    created_by uuid REFERENCES user_profiles(id),
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now()
);

ALTER TABLE webhooks ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE integration_retry_config ENABLE ROW LEVEL SECURITY;
CREATE POLICY webhooks_org ON webhooks USING (
    org_id IN (SELECT org_id FROM user_profiles
               WHERE auth_id = nullif(current_setting('request.jwt.claim.sub', true), '')::uuid)
    OR current_setting('request.jwt.claim.role', true) = 'service_role');
CREATE POLICY deliveries_org ON webhook_deliveries USING (
    org_id IN (SELECT org_id FROM user_profiles
               WHERE auth_id = nullif(current_setting('request.jwt.claim.sub', true), '')::uuid)
    OR current_setting('request.jwt.claim.role', true) = 'service_role');
