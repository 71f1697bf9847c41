-- =====================================================
-- refreshd: Attendance Statistics — 002 materialized view
-- =====================================================
-- Purpose : Pre-computed statistics per (category, season), replacing the
--           N+1 query pattern of the attendance statistics page.
-- Creates : materialized view public.attendance_statistics_summary
--             unique index idx_att_stats_summary_pk (category_id, season_id)
--             index idx_att_stats_summary_season (season_id)
--             index idx_att_stats_summary_last_session (last_session_date)
--           function public.refresh_attendance_statistics_summary()
-- Run     : through sql/attendance/install.sql (one transaction).
--
-- INPUTS: the view reads ONLY public.training_sessions and
-- public.member_attendance — not members, categories or seasons. That is
-- deliberate: the six triggers of 004_triggers.sql sit on exactly these two
-- tables, so every change that can alter the view sends a notification and
-- refreshd never misses one. Names (member, category, season) are joined in
-- at query time by the functions in 003. validate.sql checks this through
-- pg_depend; if you add an input table, add triggers for it too.
--
-- CREATE MATERIALIZED VIEW IF NOT EXISTS keeps an existing view as it is:
-- to change the definition, run rollback.sql first, then install.sql.
-- =====================================================

CREATE MATERIALIZED VIEW IF NOT EXISTS public.attendance_statistics_summary AS
WITH session_stats AS (
    SELECT ts.category_id,
           ts.season_id,
           count(*)                                          AS total_sessions,
           count(*) FILTER (WHERE ts.status = 'done')        AS completed_sessions,
           count(*) FILTER (WHERE ts.status = 'planned')     AS planned_sessions,
           count(*) FILTER (WHERE ts.status = 'cancelled')   AS cancelled_sessions,
           max(ts.session_date) FILTER (WHERE ts.status = 'done') AS last_session_date
    FROM public.training_sessions ts
    -- Adopted schemas may allow NULLs here; a NULL key row would never match
    -- itself in REFRESH CONCURRENTLY's diff, so keep them out.
    WHERE ts.category_id IS NOT NULL
      AND ts.season_id IS NOT NULL
    GROUP BY ts.category_id, ts.season_id
),
-- Two-level aggregation (member, then category/season) instead of
-- count(DISTINCT member_id): both levels hash-aggregate, no 1M-row sort.
member_stats AS (
    SELECT ts.category_id,
           ts.season_id,
           ma.member_id,
           count(*)                                                   AS records,
           count(*) FILTER (WHERE ma.attendance_status = 'present')   AS present,
           count(*) FILTER (WHERE ma.attendance_status = 'absent')    AS absent,
           count(*) FILTER (WHERE ma.attendance_status = 'late')      AS late,
           count(*) FILTER (WHERE ma.attendance_status = 'excused')   AS excused
    FROM public.member_attendance ma
    JOIN public.training_sessions ts ON ts.id = ma.training_session_id
    WHERE ts.category_id IS NOT NULL
      AND ts.season_id IS NOT NULL
    GROUP BY ts.category_id, ts.season_id, ma.member_id
),
attendance_stats AS (
    SELECT category_id,
           season_id,
           sum(records)::bigint  AS total_attendance_records,
           sum(present)::bigint  AS present_count,
           sum(absent)::bigint   AS absent_count,
           sum(late)::bigint     AS late_count,
           sum(excused)::bigint  AS excused_count,
           count(*)              AS unique_members
    FROM member_stats
    GROUP BY category_id, season_id
)
SELECT s.category_id,
       s.season_id,
       s.total_sessions,
       s.completed_sessions,
       s.planned_sessions,
       s.cancelled_sessions,
       round(100.0 * s.completed_sessions / nullif(s.total_sessions, 0), 2)
                                                   AS completion_rate,
       coalesce(a.total_attendance_records, 0)     AS total_attendance_records,
       coalesce(a.present_count, 0)                AS present_count,
       coalesce(a.absent_count, 0)                 AS absent_count,
       coalesce(a.late_count, 0)                   AS late_count,
       coalesce(a.excused_count, 0)                AS excused_count,
       -- Late still counts as attended; excused counts as not attended.
       round(100.0 * (coalesce(a.present_count, 0) + coalesce(a.late_count, 0))
                   / nullif(a.total_attendance_records, 0), 2)
                                                   AS attendance_rate,
       coalesce(a.unique_members, 0)               AS unique_members,
       s.last_session_date,
       -- Transaction start of the refresh. It makes every row differ on each
       -- REFRESH CONCURRENTLY (one row per category/season, so cheap).
       now()                                       AS last_refreshed
FROM session_stats s
LEFT JOIN attendance_stats a
       ON a.category_id = s.category_id
      AND a.season_id   = s.season_id
WITH DATA;

COMMENT ON MATERIALIZED VIEW public.attendance_statistics_summary IS
    'Attendance statistics per (category_id, season_id). Reads only training_sessions and '
    'member_attendance, whose att_stats triggers NOTIFY refresh_attendance_stats; refreshed by refreshd.';

-- REFRESH ... CONCURRENTLY needs a unique index on plain columns, without a
-- WHERE clause, covering all rows. This is it; do not make it partial.
CREATE UNIQUE INDEX IF NOT EXISTS idx_att_stats_summary_pk
    ON public.attendance_statistics_summary (category_id, season_id);

-- "All categories of a season" (the statistics page's season switch).
CREATE INDEX IF NOT EXISTS idx_att_stats_summary_season
    ON public.attendance_statistics_summary (season_id);

-- "Most recently active groups first".
CREATE INDEX IF NOT EXISTS idx_att_stats_summary_last_session
    ON public.attendance_statistics_summary (last_session_date DESC NULLS LAST);

-- Manual refresh. Not SECURITY DEFINER: REFRESH requires ownership of the
-- view, and we would rather a caller get "must be owner" than silently
-- borrow the owner's rights.
CREATE OR REPLACE FUNCTION public.refresh_attendance_statistics_summary()
RETURNS void
LANGUAGE plpgsql
VOLATILE
AS $$
BEGIN
    -- CONCURRENTLY is refused on a never-populated view (e.g. one restored
    -- WITH NO DATA); the first refresh must be a plain one.
    IF (SELECT c.relispopulated FROM pg_catalog.pg_class c
        WHERE c.oid = 'public.attendance_statistics_summary'::regclass) THEN
        REFRESH MATERIALIZED VIEW CONCURRENTLY public.attendance_statistics_summary;
    ELSE
        REFRESH MATERIALIZED VIEW public.attendance_statistics_summary;
    END IF;
END;
$$;

COMMENT ON FUNCTION public.refresh_attendance_statistics_summary() IS
    'REFRESH MATERIALIZED VIEW CONCURRENTLY public.attendance_statistics_summary (plain REFRESH if never populated).';

-- Only grant to Supabase-style roles when they exist; never create roles.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        GRANT SELECT ON public.attendance_statistics_summary TO authenticated;
    END IF;
END;
$$;
