-- 0039: a truncated webhook_deliveries takes its sequence numbers with it.
--
-- Since 0033 a delivery's number in dispatcher.delivery_sequence goes with it through the
-- statement-level AFTER DELETE trigger dispatcher_deliveries_deleted. TRUNCATE fires no
-- DELETE trigger, so `TRUNCATE webhook_deliveries` (an admin's or a test's reset) left
-- every number behind. This trigger empties the numbers when the deliveries are truncated.
--
-- Which numbers go: a TRUNCATE of webhook_deliveries empties it, and every one of its
-- partitions when the host partitions it, so every number is left without its delivery
-- and the sequence table is truncated too (instant, no dead rows; the host's TRUNCATE
-- already holds webhook_deliveries exclusively). Its lock is asked for without waiting:
-- a daemon statement that locked delivery_sequence and now waits behind the host's
-- TRUNCATE for webhook_deliveries would deadlock with it; when the lock is not free at
-- once, the numbers are deleted instead (a DELETE waits for no reader); so they are when
-- the truncating session itself has delivery_sequence open (a cursor over it: TRUNCATE
-- raises object_in_use, which would fail the host's TRUNCATE). Only a table with
-- inheritance children (not partitions) can keep rows after `TRUNCATE ONLY`: there
-- nothing is removed here. The retention sweep (retention.sql, purge_orphan_numbers)
-- removes numbers whose delivery is gone, whatever bypassed the triggers: that case, a
-- partition dropped (or detached and dropped) or truncated on its own, deletes under
-- session_replication_role = replica.
--
-- The counters (dispatcher.webhook_sequences) are kept: a webhook's next number after a
-- truncate is the one after the last it ever gave, never 1 again. A receiver that keeps
-- the numbers it processed would take a repeated number for a duplicate and drop the
-- message (docs/receivers.md, "Order and sequence numbers").
--
-- SECURITY DEFINER, as deliveries_deleted_v1: whoever truncates (the host's owner, its
-- service role, a test) need not see schema dispatcher nor hold TRUNCATE on its table;
-- the function runs as the dispatcher schema's owner, which owns delivery_sequence. The
-- daemon's own role holds no TRUNCATE (sql/least_privilege.sql) and never runs this.

CREATE FUNCTION dispatcher.deliveries_truncated_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhparent
               WHERE i.inhparent = TG_RELID AND c.relkind <> 'p') THEN
        RETURN NULL;  -- inheritance children may keep rows: left to the retention sweep
    END IF;
    BEGIN
        LOCK TABLE dispatcher.delivery_sequence IN ACCESS EXCLUSIVE MODE NOWAIT;
        TRUNCATE dispatcher.delivery_sequence;
    EXCEPTION WHEN lock_not_available OR object_in_use THEN
        DELETE FROM dispatcher.delivery_sequence;
    END;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION dispatcher.deliveries_truncated_v1() FROM PUBLIC;

CREATE TRIGGER dispatcher_deliveries_truncated
    AFTER TRUNCATE ON public.webhook_deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION dispatcher.deliveries_truncated_v1();

-- The retention sweep walks delivery_sequence by delivery_id (its primary key) and
-- probes webhook_deliveries by id: both indexed, nothing to add.
