-- 0009: due work is taken in the order it became due. The old index ordered rows
-- never attempted (next_retry_at null) before every retry, so a backlog of new
-- deliveries to one endpoint held back the retries of all the others until it was
-- gone. A row is now due since its next_retry_at (a retry, an expired lease) or,
-- without one, since it was created.
--
-- On a large webhook_deliveries table, create the index beforehand without
-- blocking writes, under the same name, and this migration only drops the old one:
--   CREATE INDEX CONCURRENTLY dispatcher_deliveries_due_since ON public.webhook_deliveries
--       ((coalesce(next_retry_at, created_at))) WHERE status IN ('pending', 'retrying');
CREATE INDEX IF NOT EXISTS dispatcher_deliveries_due_since
    ON public.webhook_deliveries ((coalesce(next_retry_at, created_at)))
    WHERE status IN ('pending', 'retrying');
DROP INDEX IF EXISTS public.dispatcher_deliveries_due;
