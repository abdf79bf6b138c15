-- Operator queries on events stuck before fan-out (dispatcher/admin/quarantine_cli.py).

-- name: quarantine_list
-- Quarantined events (fan-out exceeded statement_timeout even alone), and outbox
-- events this role could not read (kind 'unreadable': they stay in the outbox).
SELECT 'quarantined' AS kind, q.event_id, e.org_id, e.event_type, q.reason, q.error,
       q.times, q.first_queued_at AS queued_at, q.quarantined_at AS since
FROM dispatcher.quarantine q
LEFT JOIN public.events e ON e.id = q.event_id
UNION ALL
SELECT 'unreadable', o.event_id, NULL, NULL, 'unreadable',
       'the database role cannot read this event (row-level security?), or it was deleted',
       o.misses, o.created_at, o.retry_at
FROM dispatcher.outbox o
WHERE o.misses IS NOT NULL
ORDER BY 8
LIMIT %(limit)s;

-- name: quarantine_retry
-- Put quarantined events back in the outbox (all when ids is null).
SELECT dispatcher.retry_quarantined(%(ids)s::uuid[]) AS retried;
