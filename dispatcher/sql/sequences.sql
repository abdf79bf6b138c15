-- Ordered delivery and sequence numbers (0032_order_sequence.sql), for the CLI:
-- dispatcher/admin/sequences.py. Org scoping is the SQL admin API's (docs/admin-api.md).

-- name: seq_set_ordered
SELECT dispatcher.set_webhook_ordered(%(org)s, %(id)s, %(ordered)s) AS ordered;

-- name: seq_settings
SELECT coalesce((SELECT s.ordered FROM dispatcher.webhook_settings s
                  WHERE s.webhook_id = %(id)s), false) AS ordered,
       coalesce((SELECT q.last FROM dispatcher.webhook_sequences q
                  WHERE q.webhook_id = %(id)s), 0) AS last_sequence;

-- name: seq_deliveries_since
SELECT * FROM dispatcher.deliveries_since(%(org)s, %(id)s, %(after)s, %(limit)s);

-- name: seq_replay_from
SELECT replayed, skipped_open, last_sequence
FROM dispatcher.replay_from_sequence(%(org)s, %(id)s, %(from)s, %(limit)s);
