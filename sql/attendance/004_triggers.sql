-- =====================================================
-- refreshd: Attendance Statistics — 004 notify triggers
-- =====================================================
-- Purpose : Tell refreshd (LISTEN refresh_attendance_stats) that
--           attendance_statistics_summary may be stale. The triggers only
--           notify; the refresh itself happens outside the writer's
--           transaction, debounced by refreshd.
-- Creates : function public.trigger_refresh_attendance_stats()
--           6 triggers (FOR EACH STATEMENT):
--             refresh_att_stats_on_attendance_insert  ON public.member_attendance
--             refresh_att_stats_on_attendance_update  ON public.member_attendance
--             refresh_att_stats_on_attendance_delete  ON public.member_attendance (+ TRUNCATE)
--             refresh_att_stats_on_session_status     ON public.training_sessions
--             refresh_att_stats_on_session_insert     ON public.training_sessions
--             refresh_att_stats_on_session_delete     ON public.training_sessions (+ TRUNCATE)
--           view public.attendance_stats_trigger_info
--           function public.listen_for_attendance_stats_refresh()
-- Run     : through sql/attendance/install.sql (one transaction).
--
-- Why statement level and a constant payload: a 10,000-row INSERT fires a
-- statement trigger once, not 10,000 times; and PostgreSQL delivers
-- identical (channel, payload) pairs raised in one transaction only once,
-- so a transaction touching both tables still yields one notification.
-- pg_notify is transactional: nothing is sent if the writer rolls back, and
-- it is sent at COMMIT, so refreshd never refreshes before the change is
-- visible.
-- =====================================================

CREATE OR REPLACE FUNCTION public.trigger_refresh_attendance_stats()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- Keep the payload constant: a per-row or per-table payload would
    -- defeat PostgreSQL's folding of duplicate notifications. refreshd
    -- ignores payloads on this channel anyway.
    PERFORM pg_catalog.pg_notify('refresh_attendance_stats', '');
    RETURN NULL;  -- AFTER ... FOR EACH STATEMENT: return value is ignored
END;
$$;

COMMENT ON FUNCTION public.trigger_refresh_attendance_stats() IS
    'Statement-level trigger: NOTIFY refresh_attendance_stats with an empty (constant) payload.';

-- DROP IF EXISTS + CREATE rather than CREATE OR REPLACE TRIGGER: it also
-- corrects a same-named trigger that an older migration created FOR EACH
-- ROW or with other events. Inside install.sql's transaction no write can
-- happen between the two statements.

-- member_attendance: every column can matter, so no column list on UPDATE.
DROP TRIGGER IF EXISTS refresh_att_stats_on_attendance_insert ON public.member_attendance;
CREATE TRIGGER refresh_att_stats_on_attendance_insert
    AFTER INSERT ON public.member_attendance
    FOR EACH STATEMENT
    EXECUTE FUNCTION public.trigger_refresh_attendance_stats();

DROP TRIGGER IF EXISTS refresh_att_stats_on_attendance_update ON public.member_attendance;
CREATE TRIGGER refresh_att_stats_on_attendance_update
    AFTER UPDATE ON public.member_attendance
    FOR EACH STATEMENT
    EXECUTE FUNCTION public.trigger_refresh_attendance_stats();

-- TRUNCATE removes rows without firing DELETE triggers; folded in here so
-- the seed's six trigger names stay the only ones.
DROP TRIGGER IF EXISTS refresh_att_stats_on_attendance_delete ON public.member_attendance;
CREATE TRIGGER refresh_att_stats_on_attendance_delete
    AFTER DELETE OR TRUNCATE ON public.member_attendance
    FOR EACH STATEMENT
    EXECUTE FUNCTION public.trigger_refresh_attendance_stats();

-- training_sessions, UPDATE: the seed calls this the "status" trigger, but
-- listing only status would lose changes: moving a session to another
-- category or season, or changing its date, alters the view too
-- (last_session_date, per-group counts). So the column list is EVERY
-- column of training_sessions that attendance_statistics_summary reads:
-- id (join key), category_id, season_id, status, session_date.
-- Columns the view does not read (title, start_time, updated_at...) are
-- left out so routine edits do not cause refreshes. validate.sql compares
-- this list with the view's column dependencies in pg_depend; keep them in
-- step when the view changes.
DROP TRIGGER IF EXISTS refresh_att_stats_on_session_status ON public.training_sessions;
CREATE TRIGGER refresh_att_stats_on_session_status
    AFTER UPDATE OF id, category_id, season_id, status, session_date
    ON public.training_sessions
    FOR EACH STATEMENT
    EXECUTE FUNCTION public.trigger_refresh_attendance_stats();

DROP TRIGGER IF EXISTS refresh_att_stats_on_session_insert ON public.training_sessions;
CREATE TRIGGER refresh_att_stats_on_session_insert
    AFTER INSERT ON public.training_sessions
    FOR EACH STATEMENT
    EXECUTE FUNCTION public.trigger_refresh_attendance_stats();

DROP TRIGGER IF EXISTS refresh_att_stats_on_session_delete ON public.training_sessions;
CREATE TRIGGER refresh_att_stats_on_session_delete
    AFTER DELETE OR TRUNCATE ON public.training_sessions
    FOR EACH STATEMENT
    EXECUTE FUNCTION public.trigger_refresh_attendance_stats();

-- Monitoring view ("SELECT * FROM attendance_stats_trigger_info").
-- Decodes pg_trigger.tgtype: bit 0 row-level, bit 1 BEFORE, bit 6
-- INSTEAD OF, bits 2/3/4/5 INSERT/DELETE/UPDATE/TRUNCATE.
CREATE OR REPLACE VIEW public.attendance_stats_trigger_info AS
SELECT t.tgname::text                                        AS trigger_name,
       n.nspname::text                                       AS table_schema,
       c.relname::text                                       AS table_name,
       CASE WHEN t.tgtype & 2  <> 0 THEN 'BEFORE'
            WHEN t.tgtype & 64 <> 0 THEN 'INSTEAD OF'
            ELSE 'AFTER' END                                 AS timing,
       concat_ws(' OR ',
                 CASE WHEN t.tgtype & 4  <> 0 THEN 'INSERT' END,
                 CASE WHEN t.tgtype & 16 <> 0 THEN 'UPDATE' END,
                 CASE WHEN t.tgtype & 8  <> 0 THEN 'DELETE' END,
                 CASE WHEN t.tgtype & 32 <> 0 THEN 'TRUNCATE' END) AS events,
       (SELECT string_agg(a.attname::text, ', ' ORDER BY a.attnum)
        FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = t.tgrelid
          AND a.attnum = ANY (t.tgattr::int2[]))             AS update_columns,
       CASE WHEN t.tgtype & 1 <> 0 THEN 'ROW' ELSE 'STATEMENT' END AS level,
       t.tgenabled <> 'D'                                    AS enabled,
       p.oid::regprocedure::text                             AS function_name
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_class c     ON c.oid = t.tgrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_proc p      ON p.oid = t.tgfoid
WHERE NOT t.tgisinternal
  AND t.tgname LIKE '%att\_stats%';

COMMENT ON VIEW public.attendance_stats_trigger_info IS
    'The att_stats notify triggers: table, timing, events, level (should be STATEMENT), enabled.';

-- Convenience for psql sessions and tests: subscribes the calling session.
-- LISTEN takes effect when the caller's transaction commits.
CREATE OR REPLACE FUNCTION public.listen_for_attendance_stats_refresh()
RETURNS text
LANGUAGE plpgsql
VOLATILE
AS $$
BEGIN
    LISTEN refresh_attendance_stats;
    RETURN 'refresh_attendance_stats';
END;
$$;

COMMENT ON FUNCTION public.listen_for_attendance_stats_refresh() IS
    'LISTEN refresh_attendance_stats in the calling session; returns the channel name.';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        GRANT SELECT ON public.attendance_stats_trigger_info TO authenticated;
    END IF;
END;
$$;
