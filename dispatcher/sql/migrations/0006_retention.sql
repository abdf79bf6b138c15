-- 0006: retention deletes old finished deliveries in small batches, oldest first.
CREATE INDEX IF NOT EXISTS dispatcher_deliveries_finished
    ON public.webhook_deliveries (created_at) WHERE status IN ('success', 'failed');
