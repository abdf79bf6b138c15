-- 0040: the fan-out finds an event's webhooks by index (issue 12, branch fanlean).
--
-- delivery_fan_out (delivery.sql, `matched`) joins each claimed event to the webhooks of its
-- org that are active or disabled (a disabled one holds the event in dispatcher.held) and not
-- soft-deleted. The only org index the standalone schema has, dispatcher_webhooks_org_active
-- (0002), leaves the disabled ones out, so the join read every webhook of every org: a
-- sequential scan per fan-out, whatever the batch (10,000 webhooks: ~300 shared buffers and
-- ~5 ms for one event). This partial index serves that join; a host that has its own index on
-- webhooks(org_id) (the host schema's idx_webhooks_org_id) was served already and gains
-- little. webhooks is small and seldom written; on a large one create it CONCURRENTLY before
-- migrating (same name; IF NOT EXISTS skips it then):
--   CREATE INDEX CONCURRENTLY dispatcher_webhooks_org_live ON public.webhooks (org_id)
--       WHERE deleted_at IS NULL AND status IN ('active', 'disabled');
CREATE INDEX IF NOT EXISTS dispatcher_webhooks_org_live
    ON public.webhooks (org_id) WHERE deleted_at IS NULL AND status IN ('active', 'disabled');
