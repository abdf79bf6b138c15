-- Database setup (dispatcher/db.py).

-- name: db_server_has_lz4
-- Whether default_toast_compression accepts lz4 (PostgreSQL 14+ built with lz4).
SELECT coalesce(bool_or('lz4' = ANY (enumvals)), false) AS lz4
FROM pg_catalog.pg_settings WHERE name = 'default_toast_compression';
