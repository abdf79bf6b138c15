-- 0003: the dead-letter queue is listed, counted and purged by age.
CREATE INDEX IF NOT EXISTS dispatcher_deliveries_dlq
    ON public.webhook_deliveries (created_at) WHERE status = 'dlq';
