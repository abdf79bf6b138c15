-- 0033: a delivery's sequence number goes with it through a statement trigger, not a
-- foreign key (issue 12: PostgreSQL cost per delivery).
--
-- 0032 gave dispatcher.delivery_sequence a foreign key to webhook_deliveries(id) ON DELETE
-- CASCADE where it could. Its check runs once per fanned-out delivery, at the end of the
-- fan-out statement: one more query per row, planned once per connection and cached. A
-- connection whose first fan-outs met a small webhook_deliveries keeps a sequential scan
-- for that check, and every later delivery then reads the whole table (a one-webhook
-- backlog fanned out 24 events at a time: 0.46 ms of backend CPU per delivery instead of
-- 0.14). The check protects nothing the fan-out does not already guarantee (it inserts the
-- delivery and its number in one statement); the cascade is what matters, and a statement
-- trigger gives it for every DELETE of webhook_deliveries, including a host table
-- partitioned by time, where there was no foreign key (docs/host-contract.md).
--
-- Deleting a webhook cascades to its deliveries and, through this trigger, to their
-- numbers. Nothing changes for inserts and updates.

ALTER TABLE dispatcher.delivery_sequence
    DROP CONSTRAINT IF EXISTS delivery_sequence_delivery_id_fkey;

-- SECURITY DEFINER: the host deletes rows as its own roles, which cannot see schema
-- dispatcher.
CREATE FUNCTION dispatcher.deliveries_deleted_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM dispatcher.delivery_sequence s
    USING gone_deliveries g
    WHERE s.delivery_id = g.id;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION dispatcher.deliveries_deleted_v1() FROM PUBLIC;

CREATE TRIGGER dispatcher_deliveries_deleted
    AFTER DELETE ON public.webhook_deliveries
    REFERENCING OLD TABLE AS gone_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION dispatcher.deliveries_deleted_v1();
