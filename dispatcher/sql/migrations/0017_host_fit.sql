-- 0017: fit the real host (issue 11 items 3 and 5; docs/host-contract.md).
--
-- 1. Rows the host inserts into webhook_deliveries (its router's test ping and replay) carry
--    no max_attempts, so they get the column default 3, while the org's policy says
--    max_retries + 1 (4 by default). A row trigger cannot tell an explicit 3 from the
--    default, and changing the host column's default would change a host object
--    (docs/host-contract.md forbids it). The rule taken: a row INSERTED with max_attempts = 3
--    gets dispatcher.max_attempts_v1(org_id). Nothing is lost by it: every writer of ours
--    already computes max_attempts from that same function, so for our rows the trigger
--    either does not fire (the value is not 3) or writes the value they already had.
--    SECURITY DEFINER: the host inserts as its own roles, which cannot see schema
--    dispatcher; the WHEN clause keeps the function off every other insert (fan-out).
CREATE FUNCTION dispatcher.host_default_max_attempts_v1() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.max_attempts := dispatcher.max_attempts_v1(NEW.org_id);
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION dispatcher.host_default_max_attempts_v1() FROM PUBLIC;

CREATE TRIGGER dispatcher_host_default_max_attempts
    BEFORE INSERT ON public.webhook_deliveries
    FOR EACH ROW WHEN (NEW.max_attempts = 3)
    EXECUTE FUNCTION dispatcher.host_default_max_attempts_v1();

-- 2. Re-enabling a webhook through the SQL admin API. The host's auto-disable trigger never
--    resets consecutive_failures (its router does it in a second UPDATE); a webhook made
--    active again with 10 failures would never be disabled again (the trigger fires only on
--    the crossing from below 10). So enabling always resets the count, in the same UPDATE.
CREATE FUNCTION dispatcher.enable_webhook(p_org_id uuid, p_webhook_id uuid)
RETURNS TABLE (id uuid, status varchar, consecutive_failures integer)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM dispatcher.require_webhook(p_org_id, p_webhook_id);
    RETURN QUERY
    UPDATE public.webhooks w
    SET status = 'active', consecutive_failures = 0, updated_at = now()
    WHERE w.id = p_webhook_id
    RETURNING w.id, w.status, w.consecutive_failures;
END
$$;
