-- 0004: integrations (OAuth refresh, health checks, failover).
--
-- The four host tables are created only when absent (standalone mode), with the
-- columns, types and defaults of ../shared/HOST-SCHEMA.md; on a host database
-- they are left exactly as they are. The dispatcher's own bookkeeping (leases,
-- retry state, health history) lives in schema `dispatcher`.

CREATE TABLE IF NOT EXISTS public.integrations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    type varchar(50) NOT NULL,
    provider varchar(50) NOT NULL,
    name varchar(255) NOT NULL,
    config jsonb NOT NULL DEFAULT '{}'::jsonb,
    status varchar(20) NOT NULL DEFAULT 'inactive'
        CHECK (status IN ('active', 'inactive', 'error')),
    is_primary boolean DEFAULT false,
    last_health_check timestamptz,
    health_status varchar(20) DEFAULT 'unknown'
        CHECK (health_status IN ('healthy', 'degraded', 'unhealthy', 'unknown')),
    error_message text,
    error_count integer DEFAULT 0,
    metadata jsonb DEFAULT '{}'::jsonb,
    created_by uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);

CREATE TABLE IF NOT EXISTS public.integration_health_logs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    integration_id uuid NOT NULL REFERENCES public.integrations (id) ON DELETE CASCADE,
    check_type varchar(20) NOT NULL DEFAULT 'scheduled'
        CHECK (check_type IN ('manual', 'scheduled', 'auto')),
    status varchar(20) NOT NULL CHECK (status IN ('success', 'failure', 'timeout')),
    response_time_ms integer,
    error_message text,
    error_code varchar(50),
    details jsonb DEFAULT '{}'::jsonb,
    checked_by uuid,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One active token per integration: the partial unique index is part of the
-- standalone table only (a host database keeps its own constraints).
DO $do$
BEGIN
    IF to_regclass('public.integration_oauth_tokens') IS NULL THEN
        CREATE TABLE public.integration_oauth_tokens (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            org_id uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
            integration_id uuid NOT NULL
                REFERENCES public.integrations (id) ON DELETE CASCADE,
            user_id uuid,
            provider varchar(50) NOT NULL,
            access_token text NOT NULL,
            refresh_token text,
            token_type varchar(50) DEFAULT 'Bearer',
            scope text,
            expires_at timestamptz,
            refresh_expires_at timestamptz,
            account_id text,
            account_email text,
            raw_token_response jsonb,
            last_refreshed_at timestamptz,
            last_used_at timestamptz,
            status varchar(20) NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'expired', 'revoked')),
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE UNIQUE INDEX integration_oauth_tokens_one_active
            ON public.integration_oauth_tokens (integration_id) WHERE status = 'active';
    END IF;
END
$do$;

CREATE TABLE IF NOT EXISTS public.integration_failover_config (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES public.organizations (id) ON DELETE CASCADE,
    integration_type varchar(50) NOT NULL,
    primary_integration_id uuid REFERENCES public.integrations (id) ON DELETE SET NULL,
    backup_integration_id uuid REFERENCES public.integrations (id) ON DELETE SET NULL,
    failover_threshold integer NOT NULL DEFAULT 3,
    auto_failover boolean NOT NULL DEFAULT true,
    auto_recovery boolean NOT NULL DEFAULT false,
    recovery_check_interval_minutes integer NOT NULL DEFAULT 30,
    current_active varchar(20) NOT NULL DEFAULT 'primary'
        CHECK (current_active IN ('primary', 'backup')),
    last_failover_at timestamptz,
    last_recovery_at timestamptz,
    failover_count integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, integration_type)
);

-- Indexes the dispatcher's scans need, beside the host's (named dispatcher_*).
CREATE INDEX IF NOT EXISTS dispatcher_oauth_tokens_due
    ON public.integration_oauth_tokens (expires_at) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS dispatcher_health_logs_created
    ON public.integration_health_logs (created_at);
CREATE INDEX IF NOT EXISTS dispatcher_failover_primary
    ON public.integration_failover_config (primary_integration_id);

-- Refresh bookkeeping, one row per token ever due. A claim sets lease_until (the
-- single-flight lease, taken in a short transaction, never held across the HTTP
-- call); transient failures set next_attempt_at (backoff) and attempts.
CREATE TABLE dispatcher.oauth_refresh_state (
    token_id uuid PRIMARY KEY
        REFERENCES public.integration_oauth_tokens (id) ON DELETE CASCADE,
    lease_until timestamptz,
    lease_owner text,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    -- next_attempt_at holds only while the token still has the expiry it had when
    -- it was set (basis); a token someone else rewrote is due on its own terms.
    basis_expires_at timestamptz,
    claimed_expires_at timestamptz,
    last_error text,
    last_error_kind text,  -- transient | rejected (config, key or provider refusal)
    refreshed_count integer NOT NULL DEFAULT 0
);

-- Health-check schedule and history per integration: when the next check is due,
-- who holds the check now (lease), and what the last checks said.
CREATE TABLE dispatcher.integration_health_state (
    integration_id uuid PRIMARY KEY REFERENCES public.integrations (id) ON DELETE CASCADE,
    next_check_at timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz,
    lease_owner text,
    consecutive_failures integer NOT NULL DEFAULT 0,
    recent text NOT NULL DEFAULT '',  -- last outcomes, oldest first: s = success, f = failure
    healthy_since timestamptz
);
CREATE INDEX integration_health_state_due ON dispatcher.integration_health_state (next_check_at);
