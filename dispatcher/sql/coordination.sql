-- Replica heartbeats and shared per-webhook limits.

-- name: replica_heartbeat
-- Record this replica as alive, forget long-dead ones, and return the live count
-- with every rate limit (a small table).
WITH beat AS (
    INSERT INTO dispatcher.replicas (id, instance_name)
    VALUES (%(id)s, %(name)s)
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
    RETURNING id
), gone AS (
    DELETE FROM dispatcher.replicas
    WHERE heartbeat_at < now() - make_interval(secs => %(forget_after)s)
)
SELECT
    (SELECT count(*) FROM dispatcher.replicas
      WHERE heartbeat_at > now() - make_interval(secs => %(alive_within)s)
        AND id <> %(id)s) + 1 AS live,
    coalesce((SELECT jsonb_object_agg(webhook_id, rate_per_second)
                FROM dispatcher.webhook_limits), '{}'::jsonb) AS limits;

-- name: replica_leave
DELETE FROM dispatcher.replicas WHERE id = %(id)s;
