-- =====================================================
-- refreshd: Attendance Statistics — rollback
-- =====================================================
-- Purpose : Removes what 002..005 created, as the seed's
--           rollback_attendance_stats.sql does, and the keyed variant.
-- Drops   : the keyed variant of 005: the 9 attendance_keys_on_* triggers,
--           attendance_keys_from_member_attendance(),
--           attendance_keys_from_training_sessions(), attendance_keys_all(),
--           attendance_keys_lock_moved_session(),
--           table attendance_statistics_live (derived data only; install
--           refills it), view attendance_statistics_def;
--           the 6 att_stats triggers, trigger_refresh_attendance_stats(),
--           listen_for_attendance_stats_refresh(),
--           scheduled_refresh_attendance_stats(), force_refresh_attendance_stats(),
--           get_member_attendance_stats(uuid, uuid),
--           get_attendance_trends(uuid, uuid, integer),
--           get_training_session_stats(uuid, uuid),
--           refresh_attendance_statistics_summary(),
--           view attendance_stats_trigger_info,
--           materialized view attendance_statistics_summary (and its indexes).
-- KEEPS   : the base tables of 001 (categories, seasons, members,
--           training_sessions, member_attendance), their indexes and ALL
--           their data. They are the application's tables; this rollback
--           only removes the statistics layer on top of them.
-- Run     : psql "$DATABASE_URL" -f sql/attendance/rollback.sql
--           Idempotent: every DROP is IF EXISTS, so it also runs on a
--           partially installed or already rolled-back database.
--
-- Unlike the seed, no CASCADE: the drop order below is complete, and
-- CASCADE would silently take along anything a user built on top of the
-- view (a dashboard view, say). If that happens, this script stops with
-- the dependency named, and you decide.
-- =====================================================

\set ON_ERROR_STOP on

BEGIN;

\echo 'Rolling back attendance statistics migrations...'

-- Keyed variant (005) first: triggers, then what they call, then the
-- table and its definition.
DROP TRIGGER IF EXISTS attendance_keys_on_attendance_insert   ON public.member_attendance;
DROP TRIGGER IF EXISTS attendance_keys_on_attendance_update   ON public.member_attendance;
DROP TRIGGER IF EXISTS attendance_keys_on_attendance_delete   ON public.member_attendance;
DROP TRIGGER IF EXISTS attendance_keys_on_attendance_truncate ON public.member_attendance;
DROP TRIGGER IF EXISTS attendance_keys_on_session_insert      ON public.training_sessions;
DROP TRIGGER IF EXISTS attendance_keys_on_session_update      ON public.training_sessions;
DROP TRIGGER IF EXISTS attendance_keys_on_session_move        ON public.training_sessions;
DROP TRIGGER IF EXISTS attendance_keys_on_session_delete      ON public.training_sessions;
DROP TRIGGER IF EXISTS attendance_keys_on_session_truncate    ON public.training_sessions;
DROP FUNCTION IF EXISTS public.attendance_keys_from_member_attendance();
DROP FUNCTION IF EXISTS public.attendance_keys_from_training_sessions();
DROP FUNCTION IF EXISTS public.attendance_keys_all();
DROP FUNCTION IF EXISTS public.attendance_keys_lock_moved_session();
DROP TABLE IF EXISTS public.attendance_statistics_live;
DROP VIEW IF EXISTS public.attendance_statistics_def;

-- Triggers first: from here on writers no longer notify.
DROP TRIGGER IF EXISTS refresh_att_stats_on_attendance_insert ON public.member_attendance;
DROP TRIGGER IF EXISTS refresh_att_stats_on_attendance_update ON public.member_attendance;
DROP TRIGGER IF EXISTS refresh_att_stats_on_attendance_delete ON public.member_attendance;
DROP TRIGGER IF EXISTS refresh_att_stats_on_session_status    ON public.training_sessions;
DROP TRIGGER IF EXISTS refresh_att_stats_on_session_insert    ON public.training_sessions;
DROP TRIGGER IF EXISTS refresh_att_stats_on_session_delete    ON public.training_sessions;

-- Functions
DROP FUNCTION IF EXISTS public.trigger_refresh_attendance_stats();
DROP FUNCTION IF EXISTS public.listen_for_attendance_stats_refresh();
DROP FUNCTION IF EXISTS public.scheduled_refresh_attendance_stats();
DROP FUNCTION IF EXISTS public.force_refresh_attendance_stats();
DROP FUNCTION IF EXISTS public.get_member_attendance_stats(uuid, uuid);
DROP FUNCTION IF EXISTS public.get_attendance_trends(uuid, uuid, integer);
DROP FUNCTION IF EXISTS public.get_training_session_stats(uuid, uuid);
DROP FUNCTION IF EXISTS public.refresh_attendance_statistics_summary();

-- Views
DROP VIEW IF EXISTS public.attendance_stats_trigger_info;

-- Materialized view (its indexes go with it)
DROP MATERIALIZED VIEW IF EXISTS public.attendance_statistics_summary;

COMMIT;

\echo 'Rollback complete. Attendance statistics objects (and the keyed variant) removed; base tables and their data kept.'
