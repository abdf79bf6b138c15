-- Named queries of dispatcher/preflight.py: the start-up privilege check.
-- Objects are found through the catalogs (never by name resolution, which would
-- itself fail without USAGE on their schema); absent objects are skipped (the
-- schema check reports a database that is behind).

-- name: preflight_missing_privileges
-- %(needs)s: [{kind: schema|table|column|function|tables, schema, name, priv, col, args,
-- excluded}], read from sql/least_privilege.sql (dispatcher/preflight.py); a `tables` need
-- (ALL TABLES IN SCHEMA) stands for every table of its schema but those `excluded`.
WITH given AS (
    SELECT n.kind, n.schema, n.name, n.priv, n.col, n.args, n.excluded
    FROM jsonb_to_recordset(%(needs)s::jsonb) AS n(
        kind text, schema text, name text, priv text, col text, args text[], excluded text[])
), needs AS (
    SELECT g.kind, g.schema, g.name, g.priv, g.col, g.args FROM given g WHERE g.kind <> 'tables'
    UNION ALL
    SELECT 'table', g.schema, c.relname::text, g.priv, NULL, NULL
    FROM given g
    JOIN pg_catalog.pg_namespace ns ON ns.nspname = g.schema
    JOIN pg_catalog.pg_class c ON c.relnamespace = ns.oid AND c.relkind IN ('r', 'p')
    WHERE g.kind = 'tables' AND c.relname::text <> ALL (coalesce(g.excluded, '{}'))
), resolved AS (
    SELECT nd.*, ns.oid AS ns_oid, c.oid AS rel_oid, a.attnum, f.oid AS fn_oid
    FROM needs nd
    LEFT JOIN pg_catalog.pg_namespace ns ON ns.nspname = nd.schema
    LEFT JOIN pg_catalog.pg_class c
      ON c.relnamespace = ns.oid AND c.relname = nd.name AND nd.kind IN ('table', 'column')
    LEFT JOIN pg_catalog.pg_attribute a
      ON a.attrelid = c.oid AND a.attname = nd.col AND NOT a.attisdropped AND nd.kind = 'column'
    LEFT JOIN pg_catalog.pg_proc f
      ON f.pronamespace = ns.oid AND f.proname = nd.name AND nd.kind = 'function'
     AND string_to_array(pg_catalog.oidvectortypes(f.proargtypes), ', ') = nd.args
)
SELECT kind, schema, name, priv, col
FROM resolved
WHERE CASE kind
    WHEN 'schema' THEN ns_oid IS NOT NULL AND NOT has_schema_privilege(ns_oid, priv)
    WHEN 'table' THEN rel_oid IS NOT NULL AND NOT has_table_privilege(rel_oid, priv)
    WHEN 'column' THEN attnum IS NOT NULL AND NOT has_column_privilege(rel_oid, attnum, priv)
    WHEN 'function' THEN fn_oid IS NOT NULL AND NOT has_function_privilege(fn_oid, priv)
    ELSE false
END
ORDER BY schema, name, kind, priv, col;

-- name: preflight_row_security
-- Tables of %(tables)s (schema-qualified names) whose row-level security would
-- hide rows from the current role: RLS enabled, the role neither superuser nor
-- BYPASSRLS, not the owner (or the table forces RLS), and no policy naming the
-- role (or a role it belongs to) explicitly. Policies for PUBLIC do not count:
-- the host's are written for its end users, not for a backend role.
SELECT format('%%I.%%I', ns.nspname, c.relname) AS tbl
FROM unnest(%(tables)s::text[]) AS t (qualified)
JOIN pg_catalog.pg_namespace ns ON ns.nspname = split_part(t.qualified, '.', 1)
JOIN pg_catalog.pg_class c
  ON c.relnamespace = ns.oid AND c.relname = split_part(t.qualified, '.', 2)
CROSS JOIN (
    SELECT r.rolsuper OR r.rolbypassrls AS bypass
    FROM pg_catalog.pg_roles r WHERE r.rolname = current_user
) me
WHERE c.relrowsecurity
  AND NOT me.bypass
  AND (c.relforcerowsecurity OR NOT pg_has_role(current_user, c.relowner, 'USAGE'))
  AND NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_policy p, unnest(p.polroles) AS pr (role_oid)
      WHERE p.polrelid = c.oid AND pr.role_oid <> 0
        AND pg_has_role(current_user, pr.role_oid, 'USAGE')
  )
ORDER BY 1;

-- name: preflight_role
SELECT current_user AS role;

-- name: preflight_publish_event_present
SELECT to_regprocedure('public.publish_event(text, uuid, jsonb, uuid, jsonb, uuid)') IS NOT NULL
    AS present;

-- name: preflight_publish_event
-- The host's publish_event, called as the daemon's role with all six arguments (a call with
-- fewer is ambiguous on the host), inside a transaction the caller rolls back: the event row,
-- its NOTIFYs and our outbox row all vanish.
SELECT public.publish_event('dispatcher.preflight', NULL, '{}'::jsonb, NULL, '{}'::jsonb, NULL)
    AS event_id;
