-- =====================================================
-- refreshd: Attendance Statistics — 003 functions
-- =====================================================
-- Purpose : Single-query replacements for the statistics page's N+1
--           queries, and refresh helpers for schedulers and operators.
-- Creates : public.get_member_attendance_stats(uuid, uuid)
--           public.get_attendance_trends(uuid, uuid, integer)
--           public.get_training_session_stats(uuid, uuid)
--           public.scheduled_refresh_attendance_stats()
--           public.force_refresh_attendance_stats()
-- Run     : through sql/attendance/install.sql (one transaction).
--
-- The get_* functions read the base tables, not the materialized view: they
-- are per-(category, season) lookups served by indexes, and they must not
-- show stale data between two refreshes. None is SECURITY DEFINER, so they
-- run with the caller's table privileges and need no search_path pinning;
-- table names are schema-qualified anyway.
-- =====================================================

-- Per member of a category in one season. Members who moved to another
-- category but have records in this one are included too.
CREATE OR REPLACE FUNCTION public.get_member_attendance_stats(
    p_category_id uuid,
    p_season_id   uuid
)
RETURNS TABLE (
    member_id          uuid,
    first_name         text,
    last_name          text,
    completed_sessions bigint,
    recorded_sessions  bigint,
    present_count      bigint,
    absent_count       bigint,
    late_count         bigint,
    excused_count      bigint,
    attendance_rate    numeric,
    last_attended_date date
)
LANGUAGE sql
STABLE
AS $$
    WITH sessions AS (
        SELECT ts.id, ts.session_date, ts.status
        FROM public.training_sessions ts
        WHERE ts.category_id = p_category_id
          AND ts.season_id   = p_season_id
    ),
    per_member AS (
        SELECT ma.member_id,
               count(*)                                                 AS recorded,
               count(*) FILTER (WHERE ma.attendance_status = 'present') AS present,
               count(*) FILTER (WHERE ma.attendance_status = 'absent')  AS absent,
               count(*) FILTER (WHERE ma.attendance_status = 'late')    AS late,
               count(*) FILTER (WHERE ma.attendance_status = 'excused') AS excused,
               max(s.session_date) FILTER (WHERE ma.attendance_status IN ('present', 'late'))
                                                                        AS last_attended
        FROM public.member_attendance ma
        JOIN sessions s ON s.id = ma.training_session_id
        GROUP BY ma.member_id
    )
    SELECT m.id,
           m.first_name,
           m.last_name,
           (SELECT count(*) FROM sessions s WHERE s.status = 'done'),
           coalesce(pm.recorded, 0),
           coalesce(pm.present, 0),
           coalesce(pm.absent, 0),
           coalesce(pm.late, 0),
           coalesce(pm.excused, 0),
           -- Same definition as attendance_statistics_summary.attendance_rate.
           round(100.0 * (coalesce(pm.present, 0) + coalesce(pm.late, 0))
                       / nullif(pm.recorded, 0), 2),
           pm.last_attended
    FROM public.members m
    LEFT JOIN per_member pm ON pm.member_id = m.id
    WHERE m.category_id = p_category_id
       OR pm.member_id IS NOT NULL
    ORDER BY m.last_name, m.first_name, m.id;
$$;

COMMENT ON FUNCTION public.get_member_attendance_stats(uuid, uuid) IS
    'Attendance counts and rate per member for one category and season (one query instead of one per member).';

-- One row per session in the last p_days days of the season's activity.
-- The window ends today for a running season, and at the season's last
-- session for a finished one, so past seasons do not come back empty.
CREATE OR REPLACE FUNCTION public.get_attendance_trends(
    p_category_id uuid,
    p_season_id   uuid,
    p_days        integer DEFAULT 30
)
RETURNS TABLE (
    session_id      uuid,
    session_date    date,
    status          text,
    total_records   bigint,
    present_count   bigint,
    absent_count    bigint,
    late_count      bigint,
    excused_count   bigint,
    attendance_rate numeric
)
LANGUAGE sql
STABLE
AS $$
    WITH sessions AS (
        SELECT ts.id, ts.session_date, ts.status
        FROM public.training_sessions ts
        WHERE ts.category_id = p_category_id
          AND ts.season_id   = p_season_id
    ),
    window_end AS (
        SELECT least(current_date, max(s.session_date)) AS d FROM sessions s
    )
    SELECT s.id,
           s.session_date,
           s.status,
           count(ma.id),
           count(ma.id) FILTER (WHERE ma.attendance_status = 'present'),
           count(ma.id) FILTER (WHERE ma.attendance_status = 'absent'),
           count(ma.id) FILTER (WHERE ma.attendance_status = 'late'),
           count(ma.id) FILTER (WHERE ma.attendance_status = 'excused'),
           round(100.0 * count(ma.id) FILTER (WHERE ma.attendance_status IN ('present', 'late'))
                       / nullif(count(ma.id), 0), 2)
    FROM sessions s
    CROSS JOIN window_end w
    LEFT JOIN public.member_attendance ma ON ma.training_session_id = s.id
    WHERE s.session_date >  w.d - greatest(coalesce(p_days, 30), 1)
      AND s.session_date <= w.d
    GROUP BY s.id, s.session_date, s.status
    ORDER BY s.session_date, s.id;
$$;

COMMENT ON FUNCTION public.get_attendance_trends(uuid, uuid, integer) IS
    'Per-session attendance over the last p_days days of a category''s season (ending today or at the season''s last session).';

-- Always exactly one row (aggregates over an empty set still return one).
CREATE OR REPLACE FUNCTION public.get_training_session_stats(
    p_category_id uuid,
    p_season_id   uuid
)
RETURNS TABLE (
    total_sessions        bigint,
    completed_sessions    bigint,
    planned_sessions      bigint,
    cancelled_sessions    bigint,
    completion_rate       numeric,
    first_session_date    date,
    last_completed_date   date,
    next_planned_date     date,
    avg_records_per_completed_session numeric
)
LANGUAGE sql
STABLE
AS $$
    SELECT count(*),
           count(*) FILTER (WHERE ts.status = 'done'),
           count(*) FILTER (WHERE ts.status = 'planned'),
           count(*) FILTER (WHERE ts.status = 'cancelled'),
           round(100.0 * count(*) FILTER (WHERE ts.status = 'done') / nullif(count(*), 0), 2),
           min(ts.session_date),
           max(ts.session_date) FILTER (WHERE ts.status = 'done'),
           min(ts.session_date) FILTER (WHERE ts.status = 'planned' AND ts.session_date >= current_date),
           round((SELECT count(*)::numeric
                  FROM public.member_attendance ma
                  JOIN public.training_sessions t2 ON t2.id = ma.training_session_id
                  WHERE t2.category_id = p_category_id
                    AND t2.season_id   = p_season_id
                    AND t2.status      = 'done')
                 / nullif(count(*) FILTER (WHERE ts.status = 'done'), 0), 2)
    FROM public.training_sessions ts
    WHERE ts.category_id = p_category_id
      AND ts.season_id   = p_season_id;
$$;

COMMENT ON FUNCTION public.get_training_session_stats(uuid, uuid) IS
    'Session counts, completion rate and dates for one category and season.';

-- For pg_cron or another scheduler, as a safety net next to refreshd.
-- If the view is already being refreshed (refreshd, another cron run), the
-- lock wait is capped and this run is skipped instead of queueing a second,
-- redundant refresh behind the first. The SET clause scopes lock_timeout to
-- this call only.
CREATE OR REPLACE FUNCTION public.scheduled_refresh_attendance_stats()
RETURNS void
LANGUAGE plpgsql
VOLATILE
SET lock_timeout = '5s'
AS $$
BEGIN
    PERFORM public.refresh_attendance_statistics_summary();
EXCEPTION
    WHEN lock_not_available THEN
        RAISE NOTICE 'attendance_statistics_summary is being refreshed elsewhere; skipping this scheduled run';
END;
$$;

COMMENT ON FUNCTION public.scheduled_refresh_attendance_stats() IS
    'Scheduler entry point: REFRESH CONCURRENTLY, skipped (NOTICE) when another refresh holds the view for 5s.';

-- Operator's last resort: a plain REFRESH. It briefly blocks readers
-- (ACCESS EXCLUSIVE) but, unlike CONCURRENTLY, works on an unpopulated view
-- or one whose unique index is missing or invalid, and is faster when most
-- rows change.
CREATE OR REPLACE FUNCTION public.force_refresh_attendance_stats()
RETURNS void
LANGUAGE plpgsql
VOLATILE
AS $$
BEGIN
    REFRESH MATERIALIZED VIEW public.attendance_statistics_summary;
END;
$$;

COMMENT ON FUNCTION public.force_refresh_attendance_stats() IS
    'Plain (non-concurrent) REFRESH of attendance_statistics_summary; blocks readers briefly, always works.';

-- Read functions only: the refresh functions need ownership of the view
-- anyway. Granted only where the role exists; roles are never created here.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        GRANT EXECUTE ON FUNCTION public.get_member_attendance_stats(uuid, uuid)        TO authenticated;
        GRANT EXECUTE ON FUNCTION public.get_attendance_trends(uuid, uuid, integer)     TO authenticated;
        GRANT EXECUTE ON FUNCTION public.get_training_session_stats(uuid, uuid)         TO authenticated;
    END IF;
END;
$$;
