-- 0002: the dispatcher's own objects. Everything of ours lives in the schema
-- `dispatcher`, except one trigger on public.events (intake), one on
-- public.webhook_deliveries (wake-up) and one index on each host table we scan,
-- all named dispatcher_*.

CREATE SCHEMA IF NOT EXISTS dispatcher;

-- Outbox: one row per inserted event, written in the publisher's transaction.
CREATE TABLE dispatcher.outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE dispatcher.outbox SET (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000
);

-- Intake: statement-level, one INSERT per statement whatever the row count, and
-- one NOTIFY (a doorbell: the outbox is the record). SECURITY DEFINER with a
-- pinned search_path so the host's roles need no rights on our schema.
CREATE FUNCTION dispatcher.intake_events_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO dispatcher.outbox (event_id) SELECT id FROM new_events;
    PERFORM pg_notify('dispatcher_v1', 'o');
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION dispatcher.intake_events_v1() FROM PUBLIC;

CREATE TRIGGER dispatcher_intake
    AFTER INSERT ON public.events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION dispatcher.intake_events_v1();

-- Wake-up for rows others make due: the host's test pings and replays (pending
-- inserts), DLQ retries (set back to pending with next_retry_at null). Our own
-- claims always carry a next_retry_at, so they never ring.
CREATE FUNCTION dispatcher.delivery_due_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('dispatcher_v1', 'd');
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION dispatcher.delivery_due_v1() FROM PUBLIC;

CREATE TRIGGER dispatcher_delivery_due
    AFTER INSERT OR UPDATE OF status, next_retry_at ON public.webhook_deliveries
    FOR EACH ROW
    WHEN (NEW.status IN ('pending', 'retrying') AND NEW.next_retry_at IS NULL)
    EXECUTE FUNCTION dispatcher.delivery_due_v1();

-- Due deliveries, in order. A claim sets next_retry_at to the lease's end, so a
-- claimed row is not due until its lease runs out (then another replica takes it).
CREATE INDEX IF NOT EXISTS dispatcher_deliveries_due
    ON public.webhook_deliveries ((coalesce(next_retry_at, '-infinity'::timestamptz)), created_at)
    WHERE status IN ('pending', 'retrying');

CREATE INDEX IF NOT EXISTS dispatcher_webhooks_org_active
    ON public.webhooks (org_id) WHERE status = 'active' AND deleted_at IS NULL;

-- Event-type patterns: `*`, `prefix.*` (any depth below), `*.suffix` (any depth
-- above), `*` as whole segments in the middle (one segment each); anything else
-- is an exact name. Mirrors dispatcher/patterns.py (a test checks they agree).
CREATE FUNCTION dispatcher.pattern_matches(p text, t text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
DECLARE
    ps text[];
    ts text[];
BEGIN
    IF p = '*' THEN
        RETURN true;
    END IF;
    IF strpos(p, '*') = 0 THEN
        RETURN p = t;
    END IF;
    IF right(p, 2) = '.*' AND strpos(left(p, -2), '*') = 0 THEN
        RETURN length(t) > length(p) - 1 AND left(t, length(p) - 1) = left(p, -1);
    END IF;
    IF left(p, 2) = '*.' AND strpos(substr(p, 3), '*') = 0 THEN
        RETURN length(t) > length(p) - 1 AND right(t, length(p) - 1) = substr(p, 2);
    END IF;
    ps := string_to_array(p, '.');
    -- Only whole middle segments are wildcards; any other `*` makes an exact name.
    IF cardinality(ps) < 3
       OR strpos(ps[1], '*') > 0 OR strpos(ps[cardinality(ps)], '*') > 0
       OR EXISTS (SELECT 1 FROM unnest(ps) s WHERE s <> '*' AND strpos(s, '*') > 0) THEN
        RETURN p = t;
    END IF;
    ts := string_to_array(t, '.');
    IF cardinality(ps) <> cardinality(ts) THEN
        RETURN false;
    END IF;
    FOR i IN 1 .. cardinality(ps) LOOP
        IF (ps[i] = '*' AND ts[i] = '') OR (ps[i] <> '*' AND ps[i] <> ts[i]) THEN
            RETURN false;
        END IF;
    END LOOP;
    RETURN true;
END
$$;

CREATE FUNCTION dispatcher.matches_any(patterns text[], t text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT EXISTS (SELECT 1 FROM unnest(patterns) p WHERE dispatcher.pattern_matches(p, t))
$$;

-- Attempt history: one row per attempt made (webhook_deliveries keeps the last).
CREATE TABLE dispatcher.attempts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id uuid NOT NULL,
    org_id uuid NOT NULL,
    webhook_id uuid NOT NULL,
    attempt_number integer NOT NULL,
    outcome text NOT NULL,
    response_status integer,
    duration_ms integer,
    error_message text,
    attempted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attempts_delivery ON dispatcher.attempts (delivery_id);
CREATE INDEX attempts_attempted_at ON dispatcher.attempts (attempted_at);

-- Secret rotation: webhooks.secret is varchar(64) in the host, so the previous
-- secret (still signed with until it expires) lives here.
CREATE TABLE dispatcher.webhook_secrets (
    webhook_id uuid PRIMARY KEY REFERENCES public.webhooks (id) ON DELETE CASCADE,
    previous_secret text NOT NULL,
    previous_expires_at timestamptz NOT NULL,
    rotated_at timestamptz NOT NULL DEFAULT now()
);
