-- 0023: W3C trace context from the publisher to the receiver (issue 14 item 1; docs/operations.md
-- "Tracing").
--
-- The host's events table has a text column correlation_id (intime-v3's baseline); the
-- standalone one made by 0001 did not. Added when absent, with the host's type, so that
-- fan_out can read it on both.
ALTER TABLE public.events ADD COLUMN IF NOT EXISTS correlation_id text;

-- A valid W3C traceparent, version 00 (lower-cased; all-zero ids refused), else NULL: a
-- malformed value is never sent to a receiver. Plain SQL expressions, inlined into fan_out.
CREATE FUNCTION dispatcher.valid_traceparent_v1(p_value text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN lower(p_value) ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
                     AND substr(p_value, 4, 32) <> '00000000000000000000000000000000'
                     AND substr(p_value, 37, 16) <> '0000000000000000'
                THEN lower(p_value) END
$$;

-- The publisher's traceparent: metadata.traceparent, else correlation_id when it is one.
-- fan_out copies it into the delivery's request_headers, so a retry, a lease retaken by
-- another replica or a replay of the row carries it without reading events again.
CREATE FUNCTION dispatcher.event_traceparent_v1(p_metadata jsonb, p_correlation_id text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(
        dispatcher.valid_traceparent_v1(
            CASE WHEN jsonb_typeof(p_metadata) = 'object' THEN p_metadata ->> 'traceparent' END),
        dispatcher.valid_traceparent_v1(p_correlation_id))
$$;
