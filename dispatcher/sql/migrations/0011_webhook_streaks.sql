-- 0011: a webhook's failure streak, kept where no host lock can hold it up.
--
-- Outcomes used to update public.webhooks in the statement that wrote the delivery
-- rows, so one webhook row locked by a host transaction (an admin editing it, a long
-- migration) held up every outcome of every webhook until leases ran out and
-- deliveries were sent again. Now the outcome statement writes the delivery rows and
-- this table (ours: the host never locks it); its pending changes reach
-- public.webhooks in a separate statement that skips locked webhook rows and tries
-- them again later, in order (see record_outcomes / apply_webhook_counters).
--
-- It also decides what counts as one step of the streak (issue 11 item 6): a failed
-- attempt adds a step only if it started after the last counted failure of that
-- webhook ended. Attempts that overlapped in time (a burst in flight when the
-- endpoint started failing) are one step, as a sequential sender would see them.
-- The decision is made here, under this row's lock, so it holds across replicas.
--
-- No foreign key to public.webhooks on purpose: checking it would take a share lock
-- on the webhook row, the wait this table exists to avoid. Rows of deleted webhooks
-- are removed by apply_webhook_counters.
CREATE TABLE dispatcher.webhook_streaks (
    webhook_id uuid PRIMARY KEY,
    -- when the last failure counted as a step ended; null after a success
    counted_until timestamptz,
    -- changes not yet written to public.webhooks:
    pending boolean NOT NULL DEFAULT false,
    reset boolean NOT NULL DEFAULT false,        -- a success: consecutive_failures := 0 first
    add_failures integer NOT NULL DEFAULT 0,     -- then add this many steps
    gone boolean NOT NULL DEFAULT false,         -- a 410: disable
    success_at timestamptz,
    failure_at timestamptz,
    triggered_at timestamptz
);
CREATE INDEX webhook_streaks_pending ON dispatcher.webhook_streaks (webhook_id) WHERE pending;

-- Fold one webhook's newly recorded outcomes (a JSON array, in recording order, of
-- {success, counts, gone, started, ended}) into its streak row. Called by
-- record_outcomes in the transaction that writes the delivery rows.
CREATE FUNCTION dispatcher.note_outcomes_v1(p_webhook uuid, p_outcomes jsonb) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s dispatcher.webhook_streaks;
    o jsonb;
    steps integer := 0;
    was_reset boolean := false;
BEGIN
    INSERT INTO dispatcher.webhook_streaks (webhook_id) VALUES (p_webhook)
    ON CONFLICT (webhook_id) DO NOTHING;
    SELECT * INTO s FROM dispatcher.webhook_streaks WHERE webhook_id = p_webhook FOR UPDATE;
    FOR o IN SELECT value FROM jsonb_array_elements(p_outcomes) LOOP
        IF (o ->> 'success')::boolean THEN
            was_reset := true;
            steps := 0;
            s.counted_until := NULL;
            s.success_at := now();
        ELSIF (o ->> 'counts')::boolean THEN
            s.failure_at := now();
            IF s.counted_until IS NULL OR (o ->> 'started')::timestamptz >= s.counted_until THEN
                steps := steps + 1;
                s.counted_until := (o ->> 'ended')::timestamptz;
            END IF;
        END IF;
        IF (o ->> 'gone')::boolean THEN
            s.gone := true;
        END IF;
    END LOOP;
    UPDATE dispatcher.webhook_streaks SET
        counted_until = s.counted_until,
        pending = true,
        reset = s.reset OR was_reset,
        add_failures = CASE WHEN was_reset THEN steps ELSE s.add_failures + steps END,
        gone = s.gone,
        success_at = s.success_at,
        failure_at = s.failure_at,
        triggered_at = now()
    WHERE webhook_id = p_webhook;
END
$$;
REVOKE ALL ON FUNCTION dispatcher.note_outcomes_v1(uuid, jsonb) FROM PUBLIC;
