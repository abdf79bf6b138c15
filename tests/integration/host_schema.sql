-- The host's database as its own SQL leaves it (SumanthNagolu/intime-v3, Dec 2025), reduced to
-- what touches the dispatcher. Sources, copied as they are except where marked REDUCED:
--   [B]  supabase/migrations/00000000000000_baseline.sql (pg_dump of the live PostgreSQL 17
--        database): events, both publish_event overloads, the events policies, the helper
--        functions those policies call, update_webhooks_updated_at.
--   [E]  supabase/migrations/20251119190000_update_event_bus_multitenancy.sql: publish_event
--        6-argument form (identical to [B]'s).
--   [I1] supabase/migrations/20251209000000_integration_management_tables.sql: integrations,
--        integration_health_logs, integration_types, their RLS and triggers.
--   [I2] supabase/migrations/20251210000000_integration_management_part2_tables.sql: webhooks,
--        webhook_deliveries, integration_retry_config, integration_oauth_tokens,
--        integration_failover_config, their RLS, the updated_at triggers and the auto-disable
--        trigger (which disables at 10 consecutive failures and resets NOTHING on re-enable).
-- Nothing here has a CHECK the host lacks. docs/host-contract.md summarises the contract.
--
-- Roles, as on Supabase: `anon`, `authenticated`, `service_role` (BYPASSRLS), and the owner of
-- every host object, `host_owner`, standing for Supabase's `postgres`: NOT a superuser, with
-- CREATEROLE and BYPASSRLS, owner of the database and of schema public. The host's repository
-- holds no GRANTs: Supabase's default privileges (ALL to anon/authenticated/service_role) apply.
-- The `auth` schema is a stub of Supabase's: uid() and jwt() from the request's JWT claims
-- (settings request.jwt.claims / request.jwt.claim.sub), only because the host's policies call them.
--
-- Load it as the cluster superuser into an empty database, before `dispatcher migrate`.

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'host_owner') THEN
        CREATE ROLE host_owner LOGIN CREATEROLE BYPASSRLS NOSUPERUSER;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
    EXECUTE format('ALTER DATABASE %I OWNER TO host_owner', current_database());
END
$roles$;
ALTER SCHEMA public OWNER TO host_owner;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE host_owner IN SCHEMA public
    GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE host_owner IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;

-- Supabase keeps extensions in schema `extensions`; events.id defaults to uuid_generate_v4().
CREATE SCHEMA extensions;
CREATE EXTENSION "uuid-ossp" WITH SCHEMA extensions;
GRANT USAGE ON SCHEMA extensions TO PUBLIC;

-- auth: stub of Supabase's (owned by its auth admin there, readable by everyone).
CREATE SCHEMA auth;
GRANT USAGE ON SCHEMA auth TO PUBLIC;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid
$$;
CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('request.jwt.claim', true), ''),
                    nullif(current_setting('request.jwt.claims', true), ''))::jsonb
$$;

SET ROLE host_owner;

-- [B] REDUCED: organizations and user_profiles keep the columns the host's policies and
-- publish_event use (the live tables have dozens more).
CREATE TABLE public.organizations (
    id uuid DEFAULT gen_random_uuid() NOT NULL PRIMARY KEY,
    name text NOT NULL,
    slug text UNIQUE,
    status text DEFAULT 'active'::text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    deleted_at timestamp with time zone
);
INSERT INTO public.organizations (id, name, slug) VALUES
    ('00000000-0000-0000-0000-000000000001', 'Default', 'default');

CREATE TABLE public.user_profiles (
    id uuid DEFAULT gen_random_uuid() NOT NULL PRIMARY KEY,
    auth_id uuid UNIQUE,
    email text,
    full_name text,
    org_id uuid NOT NULL REFERENCES public.organizations(id) ON DELETE CASCADE,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    deleted_at timestamp with time zone
);

-- [B] REDUCED: roles/user_roles only as far as user_is_admin() reads them.
CREATE TABLE public.roles (
    id uuid DEFAULT gen_random_uuid() NOT NULL PRIMARY KEY,
    name text NOT NULL UNIQUE
);
CREATE TABLE public.user_roles (
    user_id uuid NOT NULL REFERENCES public.user_profiles(id) ON DELETE CASCADE,
    role_id uuid NOT NULL REFERENCES public.roles(id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, role_id)
);

-- [B] the helpers the events policies call.
CREATE FUNCTION public.auth_user_id() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$
  SELECT auth.uid();
$$;

CREATE FUNCTION public.auth_user_org_id() RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    AS $$
  SELECT org_id
  FROM user_profiles
  WHERE id = auth_user_id();
$$;

CREATE FUNCTION public.user_is_admin() RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    AS $$
BEGIN
  RETURN EXISTS (
    SELECT 1
    FROM user_roles ur
    JOIN roles r ON r.id = ur.role_id
    WHERE ur.user_id = auth.uid()
    AND r.name = 'admin'
  );
END;
$$;

-- [B] events, every column of the live table, its CHECKs, RLS and policies.
CREATE TABLE public.events (
    id uuid DEFAULT extensions.uuid_generate_v4() NOT NULL PRIMARY KEY,
    event_type text NOT NULL,
    event_category text NOT NULL,
    aggregate_id uuid,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    metadata jsonb DEFAULT '{}'::jsonb,
    user_id uuid,
    user_email text,
    status text DEFAULT 'pending'::text,
    retry_count integer DEFAULT 0,
    max_retries integer DEFAULT 3,
    next_retry_at timestamp with time zone,
    error_message text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    processed_at timestamp with time zone,
    failed_at timestamp with time zone,
    event_version integer DEFAULT 1,
    org_id uuid NOT NULL REFERENCES public.organizations(id) ON DELETE CASCADE,
    severity text DEFAULT 'info'::text,
    entity_type text,
    entity_id uuid,
    actor_type text DEFAULT 'user'::text,
    actor_id uuid,
    event_data jsonb DEFAULT '{}'::jsonb,
    related_entities jsonb DEFAULT '[]'::jsonb,
    correlation_id text,
    causation_id text,
    parent_event_id uuid,
    occurred_at timestamp with time zone DEFAULT now(),
    idempotency_key text,
    CONSTRAINT valid_event_status CHECK ((status = ANY (ARRAY['pending'::text, 'processing'::text, 'completed'::text, 'failed'::text, 'dead_letter'::text]))),
    CONSTRAINT valid_max_retries CHECK ((max_retries >= 0)),
    CONSTRAINT valid_retry_count CHECK ((retry_count >= 0))
);
ALTER TABLE public.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Admins can view all events" ON public.events FOR SELECT USING (public.user_is_admin());
CREATE POLICY "System can publish events" ON public.events FOR INSERT WITH CHECK (true);
CREATE POLICY "System can update events" ON public.events FOR UPDATE USING (true);
CREATE POLICY "Users can view events in their org" ON public.events FOR SELECT USING (((org_id = public.auth_user_org_id()) OR public.user_is_admin()));

-- [B] publish_event, the older 5-argument overload (no org_id). It still exists in the live
-- database, so a call with 3 to 5 arguments is ambiguous ("is not unique").
CREATE FUNCTION public.publish_event(p_event_type text, p_aggregate_id uuid, p_payload jsonb, p_user_id uuid DEFAULT NULL::uuid, p_metadata jsonb DEFAULT '{}'::jsonb) RETURNS uuid
    LANGUAGE plpgsql
    AS $$
DECLARE
  v_event_id UUID;
  v_event_category TEXT;
  v_user_email TEXT;
  v_notify_payload TEXT;
BEGIN
  -- Extract category from event_type (e.g., 'user.created' -> 'user')
  v_event_category := SPLIT_PART(p_event_type, '.', 1);

  -- Get user email if user_id provided
  IF p_user_id IS NOT NULL THEN
    SELECT email INTO v_user_email
    FROM user_profiles
    WHERE id = p_user_id;
  END IF;

  -- Insert event
  INSERT INTO events (
    event_type,
    event_category,
    aggregate_id,
    payload,
    metadata,
    user_id,
    user_email,
    status
  ) VALUES (
    p_event_type,
    v_event_category,
    p_aggregate_id,
    p_payload,
    p_metadata,
    p_user_id,
    v_user_email,
    'pending'
  ) RETURNING id INTO v_event_id;

  -- Build notification payload
  v_notify_payload := json_build_object(
    'event_id', v_event_id,
    'event_type', p_event_type,
    'aggregate_id', p_aggregate_id,
    'timestamp', NOW()
  )::TEXT;

  -- Send NOTIFY on channel matching event category
  PERFORM pg_notify(v_event_category, v_notify_payload);

  -- Also send on global event channel
  PERFORM pg_notify('events', v_notify_payload);

  RETURN v_event_id;
END;
$$;

-- [B]/[E] publish_event, the 6-argument form: SECURITY INVOKER, nine columns.
CREATE FUNCTION public.publish_event(p_event_type text, p_aggregate_id uuid, p_payload jsonb, p_user_id uuid DEFAULT NULL::uuid, p_metadata jsonb DEFAULT '{}'::jsonb, p_org_id uuid DEFAULT NULL::uuid) RETURNS uuid
    LANGUAGE plpgsql
    AS $$
DECLARE
  v_event_id UUID;
  v_event_category TEXT;
  v_user_email TEXT;
  v_notify_payload TEXT;
  v_org_id UUID;
BEGIN
  -- Extract category from event_type (e.g., 'user.created' -> 'user')
  v_event_category := SPLIT_PART(p_event_type, '.', 1);

  -- Get user email if user_id provided
  IF p_user_id IS NOT NULL THEN
    SELECT email, org_id INTO v_user_email, v_org_id
    FROM user_profiles
    WHERE id = p_user_id;
  END IF;

  -- If org_id provided explicitly, use it. Otherwise use the one from user profile.
  -- If still null, try to get from auth context (if running in RLS context)
  IF p_org_id IS NOT NULL THEN
    v_org_id := p_org_id;
  END IF;

  -- Fallback to default org if still null (should not happen in production)
  IF v_org_id IS NULL THEN
    v_org_id := '00000000-0000-0000-0000-000000000001'::UUID;
  END IF;

  -- Insert event
  INSERT INTO events (
    event_type,
    event_category,
    aggregate_id,
    payload,
    metadata,
    user_id,
    user_email,
    org_id, -- New field
    status
  ) VALUES (
    p_event_type,
    v_event_category,
    p_aggregate_id,
    p_payload,
    p_metadata,
    p_user_id,
    v_user_email,
    v_org_id,
    'pending'
  ) RETURNING id INTO v_event_id;

  -- Build notification payload (lightweight)
  v_notify_payload := json_build_object(
    'event_id', v_event_id,
    'event_type', p_event_type,
    'aggregate_id', p_aggregate_id,
    'org_id', v_org_id,
    'timestamp', NOW()
  )::TEXT;

  -- Send NOTIFY on channel matching event category
  PERFORM pg_notify(v_event_category, v_notify_payload);

  -- Also send on global event channel
  PERFORM pg_notify('events', v_notify_payload);

  RETURN v_event_id;
END;
$$;

-- [I1] integrations, integration_health_logs, integration_types.
CREATE TABLE IF NOT EXISTS integrations (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id UUID NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
  type VARCHAR(50) NOT NULL, -- email, calendar, hris, sms, video, storage, etc.
  provider VARCHAR(50) NOT NULL, -- sendgrid, resend, google, twilio, zoom, etc.
  name VARCHAR(100) NOT NULL,
  description TEXT,
  config JSONB NOT NULL DEFAULT '{}', -- Encrypted sensitive fields
  status VARCHAR(20) NOT NULL DEFAULT 'inactive', -- active, inactive, error
  is_primary BOOLEAN DEFAULT false, -- Primary integration for this type
  last_health_check TIMESTAMPTZ,
  last_sync TIMESTAMPTZ,
  health_status VARCHAR(20) DEFAULT 'unknown', -- healthy, degraded, unhealthy, unknown
  error_message TEXT,
  error_count INTEGER DEFAULT 0,
  metadata JSONB DEFAULT '{}', -- Non-sensitive metadata (rate limits, usage, etc.)
  created_by UUID REFERENCES user_profiles(id),
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  deleted_at TIMESTAMPTZ
);
CREATE INDEX idx_integrations_org_id ON integrations(org_id);
CREATE INDEX idx_integrations_type ON integrations(type);
CREATE INDEX idx_integrations_status ON integrations(status);
CREATE INDEX idx_integrations_org_type ON integrations(org_id, type);
CREATE INDEX idx_integrations_org_primary ON integrations(org_id, type, is_primary) WHERE is_primary = true AND deleted_at IS NULL;
CREATE UNIQUE INDEX idx_integrations_unique_primary
  ON integrations(org_id, type)
  WHERE is_primary = true AND deleted_at IS NULL;

CREATE TABLE IF NOT EXISTS integration_health_logs (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id UUID NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
  integration_id UUID NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
  check_type VARCHAR(50) NOT NULL DEFAULT 'manual', -- manual, scheduled, auto
  status VARCHAR(20) NOT NULL, -- success, failure, timeout
  response_time_ms INTEGER,
  error_message TEXT,
  error_code VARCHAR(50),
  details JSONB DEFAULT '{}', -- Additional diagnostic info
  checked_by UUID REFERENCES user_profiles(id),
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_health_logs_integration ON integration_health_logs(integration_id);
CREATE INDEX idx_health_logs_org ON integration_health_logs(org_id);
CREATE INDEX idx_health_logs_created ON integration_health_logs(created_at DESC);
CREATE INDEX idx_health_logs_status ON integration_health_logs(status);

CREATE TABLE IF NOT EXISTS integration_types (
  id VARCHAR(50) PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  description TEXT,
  category VARCHAR(50) NOT NULL, -- communication, productivity, hr, finance
  icon VARCHAR(50), -- Lucide icon name
  config_schema JSONB, -- JSON schema for config validation
  providers JSONB DEFAULT '[]', -- Available providers for this type
  is_active BOOLEAN DEFAULT true,
  sort_order INTEGER DEFAULT 0
);

ALTER TABLE integrations ENABLE ROW LEVEL SECURITY;
CREATE POLICY "integrations_org_access" ON integrations
  FOR ALL USING (
    org_id IN (SELECT org_id FROM user_profiles WHERE auth_id = auth.uid())
    OR auth.jwt() ->> 'role' = 'service_role'
  );
ALTER TABLE integration_health_logs ENABLE ROW LEVEL SECURITY;
CREATE POLICY "health_logs_org_access" ON integration_health_logs
  FOR ALL USING (
    org_id IN (SELECT org_id FROM user_profiles WHERE auth_id = auth.uid())
    OR auth.jwt() ->> 'role' = 'service_role'
  );
ALTER TABLE integration_types ENABLE ROW LEVEL SECURITY;
CREATE POLICY "integration_types_read" ON integration_types
  FOR SELECT USING (true);

CREATE OR REPLACE FUNCTION update_integrations_updated_at()
RETURNS TRIGGER AS $$
BEGIN
  NEW.updated_at = NOW();
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER trigger_integrations_updated_at
  BEFORE UPDATE ON integrations
  FOR EACH ROW
  EXECUTE FUNCTION update_integrations_updated_at();

-- [I2] webhooks, webhook_deliveries, integration_retry_config, integration_oauth_tokens,
-- integration_failover_config.
CREATE TABLE IF NOT EXISTS webhooks (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id UUID NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
  name VARCHAR(100) NOT NULL,
  description TEXT,
  url TEXT NOT NULL,
  secret VARCHAR(64) NOT NULL, -- HMAC secret for signature
  events TEXT[] NOT NULL DEFAULT '{}', -- Array of subscribed event types
  headers JSONB DEFAULT '{}', -- Custom headers to include
  status VARCHAR(20) NOT NULL DEFAULT 'active', -- active, inactive, disabled
  consecutive_failures INTEGER DEFAULT 0,
  last_triggered_at TIMESTAMPTZ,
  last_success_at TIMESTAMPTZ,
  last_failure_at TIMESTAMPTZ,
  created_by UUID REFERENCES user_profiles(id),
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  deleted_at TIMESTAMPTZ
);
CREATE INDEX idx_webhooks_org_id ON webhooks(org_id);
CREATE INDEX idx_webhooks_status ON webhooks(status);
CREATE INDEX idx_webhooks_events ON webhooks USING GIN(events);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id UUID NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
  webhook_id UUID NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
  event_type VARCHAR(100) NOT NULL,
  event_id UUID, -- Reference to source event if applicable
  payload JSONB NOT NULL,
  request_url TEXT NOT NULL,
  request_headers JSONB NOT NULL,
  request_body TEXT NOT NULL,
  response_status INTEGER,
  response_headers JSONB,
  response_body TEXT,
  duration_ms INTEGER,
  attempt_number INTEGER DEFAULT 1,
  max_attempts INTEGER DEFAULT 3,
  status VARCHAR(20) NOT NULL DEFAULT 'pending', -- pending, success, failed, retrying, dlq
  error_message TEXT,
  error_code VARCHAR(50),
  next_retry_at TIMESTAMPTZ,
  delivered_at TIMESTAMPTZ,
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_webhook_deliveries_webhook ON webhook_deliveries(webhook_id);
CREATE INDEX idx_webhook_deliveries_org ON webhook_deliveries(org_id);
CREATE INDEX idx_webhook_deliveries_status ON webhook_deliveries(status);
CREATE INDEX idx_webhook_deliveries_created ON webhook_deliveries(created_at DESC);
CREATE INDEX idx_webhook_deliveries_next_retry ON webhook_deliveries(next_retry_at)
  WHERE status = 'retrying' AND next_retry_at IS NOT NULL;
CREATE INDEX idx_webhook_deliveries_dlq ON webhook_deliveries(org_id, status)
  WHERE status = 'dlq';

CREATE TABLE IF NOT EXISTS integration_retry_config (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id UUID NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
  max_retries INTEGER NOT NULL DEFAULT 3,
  retry_strategy VARCHAR(20) NOT NULL DEFAULT 'exponential', -- exponential, linear, fixed
  base_delay_seconds INTEGER NOT NULL DEFAULT 5,
  max_delay_seconds INTEGER NOT NULL DEFAULT 300,
  enable_jitter BOOLEAN DEFAULT true,
  enable_dlq BOOLEAN DEFAULT true,
  dlq_retention_days INTEGER DEFAULT 30,
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  UNIQUE(org_id)
);

CREATE TABLE IF NOT EXISTS integration_oauth_tokens (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id UUID NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
  integration_id UUID NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
  user_id UUID REFERENCES user_profiles(id), -- User who authorized (optional)
  provider VARCHAR(50) NOT NULL, -- google, microsoft, zoom, etc.
  access_token TEXT NOT NULL, -- Encrypted
  refresh_token TEXT, -- Encrypted
  token_type VARCHAR(20) DEFAULT 'Bearer',
  scope TEXT, -- Space-separated scopes
  expires_at TIMESTAMPTZ,
  refresh_expires_at TIMESTAMPTZ, -- Some providers expire refresh tokens
  account_id VARCHAR(255), -- Provider account identifier
  account_email VARCHAR(255), -- Provider account email
  raw_token_response JSONB, -- Full response for debugging
  last_refreshed_at TIMESTAMPTZ,
  last_used_at TIMESTAMPTZ,
  status VARCHAR(20) DEFAULT 'active', -- active, expired, revoked
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_oauth_tokens_integration ON integration_oauth_tokens(integration_id);
CREATE INDEX idx_oauth_tokens_org ON integration_oauth_tokens(org_id);
CREATE INDEX idx_oauth_tokens_expires ON integration_oauth_tokens(expires_at)
  WHERE status = 'active';
CREATE UNIQUE INDEX idx_oauth_tokens_unique_integration
  ON integration_oauth_tokens(integration_id)
  WHERE status = 'active';

CREATE TABLE IF NOT EXISTS integration_failover_config (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id UUID NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
  integration_type VARCHAR(50) NOT NULL, -- email, sms, etc.
  primary_integration_id UUID NOT NULL REFERENCES integrations(id),
  backup_integration_id UUID REFERENCES integrations(id),
  failover_threshold INTEGER DEFAULT 3, -- Consecutive failures before failover
  auto_failover BOOLEAN DEFAULT true,
  auto_recovery BOOLEAN DEFAULT false, -- Auto-switch back when primary recovers
  recovery_check_interval_minutes INTEGER DEFAULT 30,
  current_active VARCHAR(20) DEFAULT 'primary', -- primary, backup
  last_failover_at TIMESTAMPTZ,
  last_recovery_at TIMESTAMPTZ,
  failover_count INTEGER DEFAULT 0,
  created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  UNIQUE(org_id, integration_type)
);
CREATE INDEX idx_failover_config_org ON integration_failover_config(org_id);
CREATE INDEX idx_failover_config_primary ON integration_failover_config(primary_integration_id);
CREATE INDEX idx_failover_config_backup ON integration_failover_config(backup_integration_id);

ALTER TABLE webhooks ENABLE ROW LEVEL SECURITY;
CREATE POLICY "webhooks_org_access" ON webhooks
  FOR ALL USING (
    org_id IN (SELECT org_id FROM user_profiles WHERE auth_id = auth.uid())
    OR auth.jwt() ->> 'role' = 'service_role'
  );
ALTER TABLE webhook_deliveries ENABLE ROW LEVEL SECURITY;
CREATE POLICY "webhook_deliveries_org_access" ON webhook_deliveries
  FOR ALL USING (
    org_id IN (SELECT org_id FROM user_profiles WHERE auth_id = auth.uid())
    OR auth.jwt() ->> 'role' = 'service_role'
  );
ALTER TABLE integration_retry_config ENABLE ROW LEVEL SECURITY;
CREATE POLICY "retry_config_org_access" ON integration_retry_config
  FOR ALL USING (
    org_id IN (SELECT org_id FROM user_profiles WHERE auth_id = auth.uid())
    OR auth.jwt() ->> 'role' = 'service_role'
  );
ALTER TABLE integration_oauth_tokens ENABLE ROW LEVEL SECURITY;
CREATE POLICY "oauth_tokens_org_access" ON integration_oauth_tokens
  FOR ALL USING (
    org_id IN (SELECT org_id FROM user_profiles WHERE auth_id = auth.uid())
    OR auth.jwt() ->> 'role' = 'service_role'
  );
ALTER TABLE integration_failover_config ENABLE ROW LEVEL SECURITY;
CREATE POLICY "failover_config_org_access" ON integration_failover_config
  FOR ALL USING (
    org_id IN (SELECT org_id FROM user_profiles WHERE auth_id = auth.uid())
    OR auth.jwt() ->> 'role' = 'service_role'
  );

CREATE OR REPLACE FUNCTION update_webhooks_updated_at()
RETURNS TRIGGER AS $$
BEGIN
  NEW.updated_at = NOW();
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER trigger_webhooks_updated_at
  BEFORE UPDATE ON webhooks
  FOR EACH ROW
  EXECUTE FUNCTION update_webhooks_updated_at();
CREATE TRIGGER trigger_retry_config_updated_at
  BEFORE UPDATE ON integration_retry_config
  FOR EACH ROW
  EXECUTE FUNCTION update_webhooks_updated_at();
CREATE TRIGGER trigger_oauth_tokens_updated_at
  BEFORE UPDATE ON integration_oauth_tokens
  FOR EACH ROW
  EXECUTE FUNCTION update_webhooks_updated_at();
CREATE TRIGGER trigger_failover_config_updated_at
  BEFORE UPDATE ON integration_failover_config
  FOR EACH ROW
  EXECUTE FUNCTION update_webhooks_updated_at();

-- Auto-disable after consecutive failures. It never resets the count on re-enable: the
-- host's router does that in a second UPDATE.
CREATE OR REPLACE FUNCTION check_webhook_auto_disable()
RETURNS TRIGGER AS $$
BEGIN
  IF NEW.consecutive_failures >= 10 AND OLD.consecutive_failures < 10 THEN
    NEW.status = 'disabled';
  END IF;
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER trigger_webhook_auto_disable
  BEFORE UPDATE ON webhooks
  FOR EACH ROW
  WHEN (NEW.consecutive_failures IS DISTINCT FROM OLD.consecutive_failures)
  EXECUTE FUNCTION check_webhook_auto_disable();

RESET ROLE;
