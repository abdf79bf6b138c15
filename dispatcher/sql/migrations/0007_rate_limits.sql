-- 0007: optional per-webhook rate limits, and a registry of live replicas so
-- that N replicas share one limit (each sends at most rate/N).
CREATE TABLE dispatcher.webhook_limits (
    webhook_id uuid PRIMARY KEY REFERENCES public.webhooks (id) ON DELETE CASCADE,
    rate_per_second double precision NOT NULL CHECK (rate_per_second > 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dispatcher.replicas (
    id uuid PRIMARY KEY,
    instance_name text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Set (rate > 0) or remove (NULL) a webhook's rate limit, refusing other orgs' webhooks.
CREATE FUNCTION dispatcher.set_webhook_rate_limit(p_org_id uuid, p_webhook_id uuid,
                                                  p_rate_per_second double precision)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.webhooks
                   WHERE id = p_webhook_id AND org_id = p_org_id AND deleted_at IS NULL) THEN
        RAISE EXCEPTION 'webhook % not found in organization %', p_webhook_id, p_org_id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF p_rate_per_second IS NULL THEN
        DELETE FROM dispatcher.webhook_limits WHERE webhook_id = p_webhook_id;
    ELSIF p_rate_per_second <= 0 OR p_rate_per_second > 100000 THEN
        RAISE EXCEPTION 'rate limit must be between 0 and 100000 requests per second, got %',
            p_rate_per_second USING ERRCODE = 'invalid_parameter_value';
    ELSE
        INSERT INTO dispatcher.webhook_limits (webhook_id, rate_per_second)
        VALUES (p_webhook_id, p_rate_per_second)
        ON CONFLICT (webhook_id) DO UPDATE
            SET rate_per_second = EXCLUDED.rate_per_second, updated_at = now();
    END IF;
END
$$;
