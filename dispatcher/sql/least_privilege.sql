-- least_privilege.sql: the `dispatcher` database role, holding only what the daemon needs.
--
-- NOT a migration. Run it by hand, as the owner of the dispatcher's schema and of the host
-- tables (the role that runs `dispatcher migrate`), once after installing and again after
-- every `dispatcher migrate` (it is idempotent: it revokes what it granted and grants again):
--
--     psql "postgresql://owner@db.example/app" -v ON_ERROR_STOP=1 \
--          -f "$(python -c 'import dispatcher, pathlib; print(pathlib.Path(dispatcher.__file__).parent / "sql/least_privilege.sql")')"
--
-- It creates or refreshes `dispatcher`, a NOLOGIN role that only holds grants. Give it to
-- the login role the daemon connects as, and keep migrations with the owner:
--
--     CREATE ROLE dispatcher_daemon LOGIN PASSWORD '...' IN ROLE dispatcher;
--     -- or, for an existing role:  GRANT dispatcher TO dispatcher_daemon;
--     -- or, simplest:              ALTER ROLE dispatcher LOGIN PASSWORD '...';
--
-- Row-level security: the host enables RLS on its webhook and integration tables, with
-- policies for its end users. The daemon must see every row, like the host's service
-- role: as a superuser run `ALTER ROLE dispatcher_daemon BYPASSRLS` (BYPASSRLS is not
-- inherited through role membership, so it goes on the login role), or add policies
-- naming the role (`CREATE POLICY dispatcher_all ON public.webhooks TO dispatcher
-- USING (true) WITH CHECK (true)`, and the same on the other tables it reads).
--
-- The daemon checks these grants when it starts (dispatcher/preflight.py) and stops with
-- exit code 6 and one line naming anything missing. What is granted, and why:
--
--   CONNECT on this database; USAGE on schemas public and dispatcher.
--   public.events                    SELECT            fan-out reads each new event
--                                    INSERT (the nine columns the host's publish_event
--                                    writes)           integrations publish events, and
--                                                      delivery.dead_lettered (0026)
--   public.webhooks                  SELECT            the target, secret, headers
--                                    UPDATE (consecutive_failures, last_triggered_at,
--                                    last_success_at, last_failure_at, status)
--                                                      counters; 410 Gone disables
--   public.webhook_deliveries        SELECT, INSERT, UPDATE, DELETE
--                                                      fan-out, claims, outcomes, retention
--   public.integration_retry_config  SELECT            retry policy per organization
--   schema dispatcher, every table   SELECT, INSERT, UPDATE, DELETE (outbox, attempts,
--                                    secrets, replicas, limits, integration state)
--   dispatcher.schema_migrations     SELECT only       `migrate` runs as the owner
--   functions in schema dispatcher   EXECUTE           matching, delivery bodies, admin API
--   integrations (when the tables exist): SELECT on integrations,
--                                    integration_oauth_tokens, integration_health_logs,
--                                    integration_failover_config; UPDATE of the columns
--                                    the worker writes; INSERT, DELETE on health logs
--                                    (and UPDATE (id): its purge locks rows FOR UPDATE);
--                                    EXECUTE on publish_event(text, uuid, jsonb, uuid,
--                                    jsonb, uuid) (granted whenever it exists: lifecycle
--                                    events use it too; a refusal is logged and counted,
--                                    never fails the change: docs/operations.md)
--
-- Not granted: TRUNCATE, REFERENCES, TRIGGER, CREATE on any schema, any other host table,
-- UPDATE of webhook configuration (url, secret, events, headers) or integration config.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'dispatcher') THEN
        CREATE ROLE dispatcher NOLOGIN;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO dispatcher', current_database());
END
$$;

-- Start from nothing, so that a refresh also takes back what is no longer needed.
-- (Revoking a table privilege revokes the column privileges too.)
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'public.events', 'public.webhooks', 'public.webhook_deliveries',
        'public.integration_retry_config', 'public.organizations', 'public.integrations',
        'public.integration_oauth_tokens', 'public.integration_health_logs',
        'public.integration_failover_config'
    ] LOOP
        IF to_regclass(t) IS NOT NULL THEN
            EXECUTE format('REVOKE ALL ON %s FROM dispatcher', t);
        END IF;
    END LOOP;
END
$$;
REVOKE ALL ON ALL TABLES IN SCHEMA dispatcher FROM dispatcher;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA dispatcher FROM dispatcher;

GRANT USAGE ON SCHEMA public TO dispatcher;
GRANT USAGE ON SCHEMA dispatcher TO dispatcher;

-- The host's tables.
GRANT SELECT ON public.events TO dispatcher;
GRANT SELECT ON public.webhooks TO dispatcher;
GRANT UPDATE (consecutive_failures, last_triggered_at, last_success_at, last_failure_at, status)
    ON public.webhooks TO dispatcher;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.webhook_deliveries TO dispatcher;
GRANT SELECT ON public.integration_retry_config TO dispatcher;

-- The dispatcher's own schema.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA dispatcher TO dispatcher;
REVOKE INSERT, UPDATE, DELETE ON dispatcher.schema_migrations FROM dispatcher;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA dispatcher TO dispatcher;
-- Tables a later migration adds get the same grants (re-run this script anyway).
ALTER DEFAULT PRIVILEGES IN SCHEMA dispatcher
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO dispatcher;
ALTER DEFAULT PRIVILEGES IN SCHEMA dispatcher GRANT EXECUTE ON FUNCTIONS TO dispatcher;

-- Integrations (OAuth refresh, health checks, failover), when their tables exist.
DO $$
BEGIN
    IF to_regclass('public.integrations') IS NOT NULL THEN
        GRANT SELECT ON public.integrations TO dispatcher;
        GRANT UPDATE (status, error_message, error_count, health_status, last_health_check)
            ON public.integrations TO dispatcher;
    END IF;
    IF to_regclass('public.integration_oauth_tokens') IS NOT NULL THEN
        GRANT SELECT ON public.integration_oauth_tokens TO dispatcher;
        GRANT UPDATE (access_token, refresh_token, token_type, scope, expires_at,
                      refresh_expires_at, raw_token_response, last_refreshed_at,
                      last_used_at, status)
            ON public.integration_oauth_tokens TO dispatcher;
    END IF;
    IF to_regclass('public.integration_health_logs') IS NOT NULL THEN
        GRANT SELECT, INSERT, DELETE ON public.integration_health_logs TO dispatcher;
        -- The purge locks the rows it deletes (FOR UPDATE SKIP LOCKED), which needs UPDATE
        -- on at least one column: id, the one whose change would mean least.
        GRANT UPDATE (id) ON public.integration_health_logs TO dispatcher;
    END IF;
    IF to_regclass('public.integration_failover_config') IS NOT NULL THEN
        GRANT SELECT ON public.integration_failover_config TO dispatcher;
        GRANT UPDATE (current_active, last_failover_at, last_recovery_at, failover_count)
            ON public.integration_failover_config TO dispatcher;
    END IF;
    IF to_regprocedure('public.publish_event(text, uuid, jsonb, uuid, jsonb, uuid)')
       IS NOT NULL THEN
        GRANT EXECUTE ON FUNCTION public.publish_event(text, uuid, jsonb, uuid, jsonb, uuid)
            TO dispatcher;
        -- publish_event runs with the caller's rights (SECURITY INVOKER, as the host
        -- defines it): the event row is inserted as the dispatcher, and the host's function
        -- writes these nine columns (user_email and status included; docs/host-contract.md).
        GRANT INSERT (event_type, event_category, aggregate_id, payload, metadata, user_id,
                      user_email, org_id, status)
            ON public.events TO dispatcher;
    END IF;
END
$$;
