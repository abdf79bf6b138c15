-- Database setup (dispatcher/db.py).

-- name: db_server_has_lz4
-- Whether default_toast_compression accepts lz4 (PostgreSQL 14+ built with lz4).
SELECT coalesce(bool_or('lz4' = ANY (enumvals)), false) AS lz4
FROM pg_catalog.pg_settings WHERE name = 'default_toast_compression';

-- name: db_invalid_indexes
-- Indexes of the given names (in public or dispatcher) that PostgreSQL marks invalid: left by
-- a CREATE INDEX CONCURRENTLY that failed or was interrupted, or still being built by one.
-- A migration's `CREATE INDEX IF NOT EXISTS` skips such an index, and no query uses it.
SELECT n.nspname || '.' || c.relname AS index_name, t.relname AS table_name,
       EXISTS (SELECT 1 FROM pg_catalog.pg_stat_progress_create_index p
               WHERE p.index_relid = c.oid) AS building
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_class t ON t.oid = i.indrelid
WHERE NOT i.indisvalid
  AND n.nspname IN ('public', 'dispatcher')
  AND c.relname = ANY (%(names)s::text[])
ORDER BY 1;
