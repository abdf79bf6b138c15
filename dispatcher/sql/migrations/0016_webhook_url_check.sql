-- 0016: dispatcher.webhook_url_problem(url): the SQL API's check of a webhook URL, for the
-- host's admin code before it writes webhooks.url (reference: docs/admin-api.md).
--
-- Returns NULL when the URL is usable, else one line saying what is wrong. The rules on the
-- host name are those of the daemon's own guard (dispatcher/ssrf.py, host_name_problem):
-- a malformed name (`api..example.com`, a label over 63 characters) would otherwise be
-- accepted, fail in the resolver and never be delivered. Scheme http/https, no credentials,
-- port 1-65535; a DNS name of at most 253 characters, no empty label, labels of at most 63
-- characters of letters, digits, '-' and '_', not starting or ending with '-'. Non-ASCII
-- (internationalised) labels are checked for emptiness and characters here; their IDNA
-- encoding is checked by the daemon, which records a failure that is not charged to the
-- endpoint. Whether an address may be contacted (SSRF) is the daemon's decision alone.
--
-- A host that wants the database to refuse such rows can add, at its own choice:
--   ALTER TABLE webhooks ADD CONSTRAINT webhooks_url_usable
--     CHECK (dispatcher.webhook_url_problem(url) IS NULL) NOT VALID;
CREATE FUNCTION dispatcher.webhook_url_problem(p_url text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_url text := btrim(coalesce(p_url, ''));
    v_scheme text;
    v_authority text;
    v_host text;
    v_port text;
    v_name text;
    v_label text;
BEGIN
    IF v_url = '' THEN
        RETURN 'invalid webhook URL: it is empty';
    END IF;
    v_scheme := lower(substring(v_url FROM '^([A-Za-z][A-Za-z0-9+.-]*)://'));
    IF v_scheme IS NULL OR v_scheme NOT IN ('http', 'https') THEN
        RETURN format('invalid webhook URL: scheme %L is not http or https',
                      coalesce(v_scheme, '(none)'));
    END IF;
    v_authority := substring(v_url FROM '^[^:]+://([^/?#]*)');
    IF position('@' IN v_authority) > 0 THEN
        RETURN 'invalid webhook URL: it contains credentials (user:password@); '
               'put them in the webhook''s custom headers instead';
    END IF;
    IF v_authority LIKE '[%' THEN
        v_host := substring(v_authority FROM '^\[([^\]]*)\]');
        v_port := substring(v_authority FROM '^\[[^\]]*\](?::([^:]*))?$');
        IF v_host IS NULL OR v_host !~ '^[0-9A-Fa-f:.]+(%.+)?$' THEN
            RETURN format('invalid webhook URL: host %L is not an IPv6 address', v_authority);
        END IF;
    ELSE
        v_host := substring(v_authority FROM '^([^:]*)');
        v_port := substring(v_authority FROM '^[^:]*:(.*)$');
    END IF;
    IF v_host IS NULL OR v_host = '' THEN
        RETURN 'invalid webhook URL: it has no host';
    END IF;
    IF v_port IS NOT NULL AND v_port <> ''
       AND (v_port !~ '^[0-9]{1,5}$' OR v_port::integer NOT BETWEEN 1 AND 65535) THEN
        RETURN format('invalid webhook URL for host %L: port %L is not 1 to 65535',
                      v_host, v_port);
    END IF;
    IF v_authority LIKE '[%' OR v_host ~ '^[0-9.]+$' THEN
        RETURN NULL;  -- an address: the daemon's SSRF guard decides
    END IF;
    IF position('%' IN v_host) > 0 THEN
        RETURN format('invalid webhook URL: host %L is percent-encoded', v_host);
    END IF;
    v_name := CASE WHEN right(v_host, 1) = '.' THEN left(v_host, -1) ELSE v_host END;
    IF v_name = '' THEN
        RETURN format('invalid webhook URL: host %L is empty', v_host);
    END IF;
    IF length(v_name) > 253 THEN
        RETURN format('invalid webhook URL: host %L is %s characters long (at most 253)',
                      v_host, length(v_name));
    END IF;
    FOREACH v_label IN ARRAY string_to_array(v_name, '.') LOOP
        IF v_label = '' THEN
            RETURN format('invalid webhook URL: host %L has an empty label '
                          '(two dots in a row, or a leading dot)', v_host);
        END IF;
        IF length(v_label) > 63 THEN
            RETURN format('invalid webhook URL: host %L has a label of %s characters '
                          '(at most 63)', v_host, length(v_label));
        END IF;
        IF v_label ~ '[\s/\\?#@:%<>"`{}|^\[\]]' OR v_label ~ '[\x01-\x1f\x7f]'
           OR (v_label ~ '^[\x01-\x7f]*$' AND v_label !~ '^[A-Za-z0-9_-]+$') THEN
            RETURN format('invalid webhook URL: host %L has a character that is not a '
                          'letter, digit, ''-'' or ''_''', v_host);
        END IF;
        IF left(v_label, 1) = '-' OR right(v_label, 1) = '-' THEN
            RETURN format('invalid webhook URL: host %L has a label that starts or ends '
                          'with ''-'' (%L)', v_host, v_label);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION dispatcher.webhook_url_problem(text) IS
    'NULL when a webhook URL is usable, else what is wrong with it (docs/admin-api.md)';
