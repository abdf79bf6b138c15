-- 0041: dispatcher.matches_any in PL/pgSQL (issue 12, the 200 events/s latency profile).
--
-- As a SQL function whose body holds a sublink (SELECT EXISTS (... unnest(patterns) ...)),
-- matches_any could not be inlined into delivery_fan_out's join, so every execution of the
-- fan-out parsed, analysed and planned its body again (fmgr_sql; `base_yyparse` among the
-- backends' top symbols): ~6 % of the daemon's PostgreSQL CPU per delivery at 200 events/s,
-- where a fan-out carries about one event (docs/performance.md, "where the backends' CPU
-- goes"). PL/pgSQL compiles a function once per session. Same answers: an event matches when
-- one of the patterns does (dispatcher.pattern_matches, 0002); a NULL or empty array, or
-- NULL elements, match nothing (tests/integration/test_patterns_sql.py).
CREATE OR REPLACE FUNCTION dispatcher.matches_any(patterns text[], t text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    p text;
BEGIN
    IF patterns IS NULL THEN
        RETURN false;
    END IF;
    FOREACH p IN ARRAY patterns LOOP
        IF dispatcher.pattern_matches(p, t) THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END
$$;
