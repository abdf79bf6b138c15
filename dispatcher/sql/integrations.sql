-- Named queries of the integrations worker (OAuth refresh, health checks,
-- failover, retention) and of `dispatcher integrations|secrets|keys`.
-- Loaded by dispatcher/queries.py; parameters use psycopg's %(name)s style.

-- name: integ_publish_event
-- The host's 6-argument publish_event(): the event row, its NOTIFYs and our outbox.
SELECT publish_event(%(type)s, %(aggregate_id)s, %(payload)s, NULL, '{}'::jsonb, %(org_id)s)
    AS event_id;

-- ---------------------------------------------------------------------------
-- OAuth refresh
-- ---------------------------------------------------------------------------

-- name: integ_claim_tokens
-- Lease due tokens (active, expiring within the lead time, of an integration
-- that is neither deleted nor inactive, not leased, not backing off). The
-- ON CONFLICT ... WHERE is evaluated against the latest committed state row,
-- so of two replicas racing for one token exactly one gets it.
WITH due AS (
    SELECT t.id, t.expires_at
    FROM public.integration_oauth_tokens t
    JOIN public.integrations i ON i.id = t.integration_id
    LEFT JOIN dispatcher.oauth_refresh_state s ON s.token_id = t.id
    WHERE t.status = 'active'
      AND t.expires_at IS NOT NULL
      AND t.expires_at <= now() + make_interval(secs => %(lead)s)
      AND i.deleted_at IS NULL AND i.status <> 'inactive'
      AND (s.lease_until IS NULL OR s.lease_until <= now())
      AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= now()
           OR s.basis_expires_at IS DISTINCT FROM t.expires_at)
    ORDER BY t.expires_at
    LIMIT %(limit)s
)
INSERT INTO dispatcher.oauth_refresh_state AS s
    (token_id, lease_until, lease_owner, claimed_expires_at)
SELECT id, now() + make_interval(secs => %(lease)s), %(owner)s, expires_at FROM due
ON CONFLICT (token_id) DO UPDATE
    SET lease_until = EXCLUDED.lease_until, lease_owner = EXCLUDED.lease_owner,
        claimed_expires_at = EXCLUDED.claimed_expires_at
    WHERE (s.lease_until IS NULL OR s.lease_until <= now())
      AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= now()
           OR s.basis_expires_at IS DISTINCT FROM EXCLUDED.claimed_expires_at)
RETURNING s.token_id, s.lease_until;

-- name: integ_load_token
-- A token we hold the lease on, re-checked in a fresh snapshot: if another
-- replica refreshed it meanwhile it is no longer due and nothing comes back.
SELECT t.id, t.org_id, t.integration_id, t.provider AS token_provider, t.access_token,
       t.refresh_token, t.scope, t.expires_at, t.refresh_expires_at,
       i.provider, i.type, i.name, i.config, i.status AS integration_status,
       s.attempts
FROM public.integration_oauth_tokens t
JOIN public.integrations i ON i.id = t.integration_id
JOIN dispatcher.oauth_refresh_state s ON s.token_id = t.id
WHERE t.id = %(token_id)s
  AND s.lease_owner = %(owner)s AND s.lease_until = %(lease_until)s
  AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= now()
       OR s.basis_expires_at IS DISTINCT FROM t.expires_at)
  AND t.status = 'active'
  AND t.expires_at <= now() + make_interval(secs => %(lead)s)
  AND i.deleted_at IS NULL AND i.status <> 'inactive';

-- name: integ_lock_token
SELECT id, status FROM public.integration_oauth_tokens WHERE id = %(token_id)s FOR UPDATE;

-- name: integ_token_refreshed
UPDATE public.integration_oauth_tokens
SET access_token = %(access_token)s,
    refresh_token = coalesce(%(refresh_token)s, refresh_token),
    token_type = %(token_type)s,
    scope = coalesce(%(scope)s, scope),
    expires_at = %(expires_at)s,
    refresh_expires_at = coalesce(%(refresh_expires_at)s, refresh_expires_at),
    raw_token_response = %(raw)s,
    last_refreshed_at = now()
WHERE id = %(token_id)s;

-- name: integ_token_expired
UPDATE public.integration_oauth_tokens SET status = 'expired'
WHERE id = %(token_id)s AND status = 'active';

-- name: integ_refresh_done
-- %(not_before)s: a refreshed token is not refreshed again before half its new
-- lifetime has passed, even when the provider's lifetime is shorter than the lead.
UPDATE dispatcher.oauth_refresh_state
SET lease_until = NULL, lease_owner = NULL, attempts = 0,
    next_attempt_at = %(not_before)s::timestamptz,
    basis_expires_at = %(expires_at)s::timestamptz,
    last_error = NULL, last_error_kind = NULL,
    refreshed_count = refreshed_count + %(refreshed)s
WHERE token_id = %(token_id)s;

-- name: integ_release_token
UPDATE dispatcher.oauth_refresh_state SET lease_until = NULL, lease_owner = NULL
WHERE token_id = %(token_id)s AND lease_owner = %(owner)s;

-- name: integ_refresh_retry
UPDATE dispatcher.oauth_refresh_state
SET lease_until = NULL, lease_owner = NULL, attempts = attempts + %(count)s,
    next_attempt_at = now() + make_interval(secs => %(delay)s), last_error = %(error)s,
    last_error_kind = %(kind)s,
    basis_expires_at = claimed_expires_at
WHERE token_id = %(token_id)s;

-- name: integ_integration_error
-- Mark one integration `error` with a message (an inactive one stays inactive).
UPDATE public.integrations
SET status = CASE WHEN status = 'inactive' THEN status ELSE 'error' END,
    error_message = %(message)s::text
WHERE id = %(integration_id)s
  AND (status IS DISTINCT FROM 'error' OR error_message IS DISTINCT FROM %(message)s::text)
RETURNING id;

-- ---------------------------------------------------------------------------
-- Health checks
-- ---------------------------------------------------------------------------

-- name: integ_seed_health_state
-- A schedule row for every checkable integration that has none, first check
-- spread over %(spread)s seconds so a fleet does not fire at once.
INSERT INTO dispatcher.integration_health_state (integration_id, next_check_at)
SELECT i.id, now() + random() * make_interval(secs => %(spread)s)
FROM public.integrations i
WHERE i.deleted_at IS NULL AND i.status <> 'inactive'
  AND NOT EXISTS (
      SELECT 1 FROM dispatcher.integration_health_state h WHERE h.integration_id = i.id
  )
ON CONFLICT (integration_id) DO NOTHING;

-- name: integ_claim_health
-- Lease due checks and schedule the next one now (interval from the
-- integration's config, else the default; jittered by +-%(jitter)s).
UPDATE dispatcher.integration_health_state h
SET lease_until = now() + make_interval(secs => %(lease)s),
    lease_owner = %(owner)s,
    next_check_at = now() + make_interval(
        secs => d.every * (1 - %(jitter)s + 2 * %(jitter)s * random()))
FROM (
    SELECT h2.integration_id,
           greatest(1.0, coalesce(
               CASE WHEN jsonb_typeof(i.config -> 'health_check_interval_seconds') = 'number'
                    THEN (i.config ->> 'health_check_interval_seconds')::float8 END,
               CASE WHEN jsonb_typeof(i.config -> 'health_check_interval_minutes') = 'number'
                    THEN (i.config ->> 'health_check_interval_minutes')::float8 * 60 END,
               %(interval)s::float8)) AS every
    FROM dispatcher.integration_health_state h2
    JOIN public.integrations i ON i.id = h2.integration_id
    WHERE h2.next_check_at <= now()
      AND (h2.lease_until IS NULL OR h2.lease_until <= now())
      AND i.deleted_at IS NULL AND i.status <> 'inactive'
    ORDER BY h2.next_check_at
    LIMIT %(limit)s
    FOR UPDATE OF h2 SKIP LOCKED
) d
WHERE h.integration_id = d.integration_id
RETURNING h.integration_id, h.lease_until;

-- name: integ_release_health
UPDATE dispatcher.integration_health_state SET lease_until = NULL, lease_owner = NULL
WHERE integration_id = %(integration_id)s AND lease_owner = %(owner)s;

-- name: integ_load_integration
-- One integration with its active token (if any) and whether it has tokens at all.
SELECT i.id, i.org_id, i.type, i.provider, i.name, i.config, i.status, i.health_status,
       i.deleted_at,
       t.id AS token_id, t.access_token, t.refresh_token, t.expires_at AS token_expires_at,
       r.last_error AS refresh_error, r.last_error_kind AS refresh_error_kind,
       (SELECT x.status FROM public.integration_oauth_tokens x WHERE x.integration_id = i.id
        ORDER BY x.expires_at DESC NULLS LAST LIMIT 1) AS last_token_status,
       EXISTS (SELECT 1 FROM public.integration_oauth_tokens x WHERE x.integration_id = i.id)
           AS has_tokens
FROM public.integrations i
LEFT JOIN LATERAL (
    SELECT id, access_token, refresh_token, expires_at
    FROM public.integration_oauth_tokens
    WHERE integration_id = i.id AND status = 'active'
    ORDER BY expires_at DESC NULLS FIRST
    LIMIT 1
) t ON true
LEFT JOIN dispatcher.oauth_refresh_state r ON r.token_id = t.id
WHERE i.id = %(integration_id)s;

-- name: integ_lock_integration
SELECT id, org_id, type, provider, name, status, health_status, error_count
FROM public.integrations WHERE id = %(integration_id)s FOR UPDATE;

-- name: integ_lock_health_state
INSERT INTO dispatcher.integration_health_state AS h (integration_id)
VALUES (%(integration_id)s)
ON CONFLICT (integration_id) DO UPDATE SET integration_id = h.integration_id
RETURNING consecutive_failures, recent, healthy_since;

-- name: integ_insert_health_log
INSERT INTO public.integration_health_logs
    (org_id, integration_id, check_type, status, response_time_ms, error_message, error_code,
     details)
VALUES (%(org_id)s, %(integration_id)s, %(check_type)s, %(status)s, %(response_time_ms)s,
        %(error_message)s, %(error_code)s, %(details)s)
RETURNING id;

-- name: integ_update_integration_health
UPDATE public.integrations
SET last_health_check = now(),
    health_status = %(health_status)s::text,
    error_count = CASE WHEN %(failed)s::boolean THEN coalesce(error_count, 0) + 1 ELSE 0 END,
    error_message = CASE WHEN %(failed)s::boolean THEN %(error_message)s::text
                         WHEN status = 'error' AND %(health_status)s::text <> 'healthy'
                         THEN error_message END,
    status = CASE WHEN status = 'inactive' THEN status
                  WHEN %(health_status)s::text = 'unhealthy' THEN 'error'
                  WHEN %(health_status)s::text = 'healthy' THEN 'active'
                  ELSE status END
WHERE id = %(integration_id)s;

-- name: integ_update_health_state
UPDATE dispatcher.integration_health_state
SET consecutive_failures = %(consecutive_failures)s,
    recent = %(recent)s,
    healthy_since = %(healthy_since)s,
    lease_until = CASE WHEN lease_owner = %(owner)s THEN NULL ELSE lease_until END,
    lease_owner = CASE WHEN lease_owner = %(owner)s THEN NULL ELSE lease_owner END
WHERE integration_id = %(integration_id)s;

-- name: integ_touch_token_used
UPDATE public.integration_oauth_tokens SET last_used_at = now() WHERE id = %(token_id)s;

-- name: integ_purge_health_logs
-- One small batch of health logs past retention; repeated until none is left.
DELETE FROM public.integration_health_logs
WHERE id IN (
    SELECT id FROM public.integration_health_logs
    WHERE created_at < now() - make_interval(days => %(days)s)
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
);

-- ---------------------------------------------------------------------------
-- Failover
-- ---------------------------------------------------------------------------

-- name: integ_failover_configs
-- Failover configs in which this integration is the primary, locked.
SELECT id, org_id, integration_type, primary_integration_id, backup_integration_id,
       failover_threshold, auto_failover, auto_recovery, recovery_check_interval_minutes,
       current_active
FROM public.integration_failover_config
WHERE primary_integration_id = %(integration_id)s
ORDER BY id
FOR UPDATE;

-- name: integ_backup_status
SELECT id, name, provider, status, health_status, deleted_at
FROM public.integrations WHERE id = %(integration_id)s;

-- name: integ_failover_to_backup
UPDATE public.integration_failover_config
SET current_active = 'backup', last_failover_at = now(),
    failover_count = coalesce(failover_count, 0) + 1
WHERE id = %(config_id)s AND current_active = 'primary'
RETURNING failover_count;

-- name: integ_recover_to_primary
UPDATE public.integration_failover_config
SET current_active = 'primary', last_recovery_at = now()
WHERE id = %(config_id)s AND current_active = 'backup'
RETURNING id;

-- ---------------------------------------------------------------------------
-- Operator commands
-- ---------------------------------------------------------------------------

-- name: integ_list
SELECT i.id, i.org_id, i.type, i.provider, i.name, i.status, i.health_status,
       i.last_health_check, i.error_count, i.error_message,
       t.status AS token_status, t.expires_at AS token_expires_at,
       h.next_check_at,
       f.current_active AS failover_active,
       CASE WHEN f.primary_integration_id = i.id THEN 'primary'
            WHEN f.backup_integration_id = i.id THEN 'backup' END AS failover_role
FROM public.integrations i
LEFT JOIN LATERAL (
    SELECT status, expires_at FROM public.integration_oauth_tokens
    WHERE integration_id = i.id ORDER BY (status = 'active') DESC, expires_at DESC NULLS LAST
    LIMIT 1
) t ON true
LEFT JOIN dispatcher.integration_health_state h ON h.integration_id = i.id
LEFT JOIN LATERAL (
    SELECT primary_integration_id, backup_integration_id, current_active
    FROM public.integration_failover_config
    WHERE primary_integration_id = i.id OR backup_integration_id = i.id
    LIMIT 1
) f ON true
WHERE i.deleted_at IS NULL
  AND (%(org_id)s::uuid IS NULL OR i.org_id = %(org_id)s::uuid)
ORDER BY i.org_id, i.type, i.name, i.id;

-- name: integ_config_batch
SELECT id, config FROM public.integrations
WHERE id > %(after)s ORDER BY id LIMIT %(batch)s;

-- name: integ_config_rewrite
-- Only when nobody changed the row since we read it (the host may be writing).
UPDATE public.integrations SET config = %(new)s
WHERE id = %(id)s AND config = %(old)s
RETURNING id;

-- name: integ_token_batch
SELECT id, integration_id, access_token, refresh_token FROM public.integration_oauth_tokens
WHERE id > %(after)s ORDER BY id LIMIT %(batch)s;

-- name: integ_token_rewrite
UPDATE public.integration_oauth_tokens
SET access_token = %(access_token)s, refresh_token = %(refresh_token)s
WHERE id = %(id)s AND access_token = %(old_access_token)s
  AND refresh_token IS NOT DISTINCT FROM %(old_refresh_token)s
RETURNING id;

-- name: integ_reencrypt_count
-- Rows `keys rotate` / `secrets encrypt` read (progress).
SELECT (SELECT count(*) FROM public.integrations)
     + (SELECT count(*) FROM public.integration_oauth_tokens) AS n;
