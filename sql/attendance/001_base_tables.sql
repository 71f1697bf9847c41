-- =====================================================
-- refreshd: Attendance Statistics — 001 base tables
-- =====================================================
-- Purpose : The tables the attendance statistics seed assumes already exist
--           ("Required Tables": categories, seasons, members,
--           training_sessions, member_attendance).
-- Creates : public.categories, public.seasons, public.members,
--           public.training_sessions, public.member_attendance
--           and indexes on their foreign-key columns.
-- Run     : through sql/attendance/install.sql (one transaction).
--
-- CREATE ... IF NOT EXISTS throughout: on a database that already has these
-- tables (the seed's situation) this file changes nothing, and rollback.sql
-- never drops them, so application data survives install/rollback cycles.
-- Plain SQL only, no psql meta-commands.
-- =====================================================

CREATE TABLE IF NOT EXISTS public.categories (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT categories_name_key UNIQUE (name)
);

CREATE TABLE IF NOT EXISTS public.seasons (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text        NOT NULL,
    start_date  date,
    end_date    date,
    -- The seed's tests pick "the" season via WHERE is_active = true.
    is_active   boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT seasons_name_key UNIQUE (name),
    CONSTRAINT seasons_dates_check CHECK (end_date IS NULL OR start_date IS NULL OR end_date >= start_date)
);

CREATE TABLE IF NOT EXISTS public.members (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- A member outlives a deleted category (SET NULL): attendance history stays.
    category_id uuid        REFERENCES public.categories (id) ON DELETE SET NULL,
    first_name  text        NOT NULL,
    last_name   text        NOT NULL,
    is_active   boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.training_sessions (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- RESTRICT: deleting a category or season that still has sessions is
    -- almost certainly a mistake; make the caller delete the sessions first.
    category_id  uuid        NOT NULL REFERENCES public.categories (id) ON DELETE RESTRICT,
    season_id    uuid        NOT NULL REFERENCES public.seasons (id) ON DELETE RESTRICT,
    session_date date        NOT NULL,
    start_time   time,
    title        text,
    status       text        NOT NULL DEFAULT 'planned',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT training_sessions_status_check
        CHECK (status IN ('planned', 'done', 'cancelled'))
);

CREATE TABLE IF NOT EXISTS public.member_attendance (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Attendance has no meaning without its member or session: CASCADE.
    member_id           uuid        NOT NULL REFERENCES public.members (id) ON DELETE CASCADE,
    training_session_id uuid        NOT NULL REFERENCES public.training_sessions (id) ON DELETE CASCADE,
    attendance_status   text        NOT NULL,
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    notes               text,
    CONSTRAINT member_attendance_status_check
        CHECK (attendance_status IN ('present', 'absent', 'late', 'excused')),
    -- One record per member and session; the seed's INSERTs rely on it for
    -- ON CONFLICT. Its index also serves lookups by member_id.
    CONSTRAINT member_attendance_member_session_key UNIQUE (member_id, training_session_id)
);

-- Foreign-key columns. Without these, ON DELETE CASCADE/RESTRICT checks scan
-- the child table, and the statistics view's join has nothing to use.
CREATE INDEX IF NOT EXISTS idx_members_category_id
    ON public.members (category_id);
CREATE INDEX IF NOT EXISTS idx_training_sessions_category_season_date
    ON public.training_sessions (category_id, season_id, session_date);
CREATE INDEX IF NOT EXISTS idx_training_sessions_season_id
    ON public.training_sessions (season_id);
CREATE INDEX IF NOT EXISTS idx_member_attendance_training_session_id
    ON public.member_attendance (training_session_id);
