-- =====================================================
-- refreshd: Attendance Statistics — 005 keyed variant
-- =====================================================
-- Purpose : The statistics of 002 as a plain table that refreshd keeps
--           equal to its definition one (category_id, season_id) group at
--           a time ("Keyed refresh" in refreshd's SPEC), next to the
--           materialized view, which stays as it is. A write recomputes
--           only the groups it touched, so freshness no longer grows with
--           the data the way REFRESH MATERIALIZED VIEW does.
-- Creates : view  public.attendance_statistics_def   the definition: exactly
--             the query of public.attendance_statistics_summary (same
--             columns, types and order)
--           table public.attendance_statistics_live  what readers read
--             primary key attendance_statistics_live_pkey (category_id, season_id)
--             index idx_attendance_statistics_live_season (season_id)
--             index idx_attendance_statistics_live_last_session (last_session_date)
--           trigger functions public.attendance_keys_from_member_attendance(),
--             public.attendance_keys_from_training_sessions(),
--             public.attendance_keys_all(),
--             public.attendance_keys_lock_moved_session()
--           8 triggers, AFTER ... FOR EACH STATEMENT, one event each:
--             attendance_keys_on_attendance_{insert,update,delete,truncate}
--               ON public.member_attendance
--             attendance_keys_on_session_{insert,update,delete,truncate}
--               ON public.training_sessions
--           1 trigger, BEFORE UPDATE ... FOR EACH ROW:
--             attendance_keys_on_session_move ON public.training_sessions
-- Run     : through sql/attendance/install.sql (one transaction), after 004.
--
-- refreshd config for it:
--   [[view]]
--   name     = "public.attendance_statistics_live"
--   kind     = "keyed"
--   query    = "public.attendance_statistics_def"
--   key      = ["category_id", "season_id"]
--   channels = ["attendance_keys"]
--
-- NOTIFICATIONS on channel attendance_keys (the only channel used here):
--   [["<category_id>","<season_id>"],...]  the distinct groups a statement
--        changed: a JSON array of key tuples in key order, uuids as JSON
--        strings, sorted, no whitespace, e.g.
--        [["00000001-0000-4000-8000-000000000001","00000002-0000-4000-8000-000000000004"]]
--   *    every group: on TRUNCATE of either table, and when the list would
--        not fit in one notification (PostgreSQL refuses payloads of 8,000
--        bytes or more; a key takes 80 bytes, so at most 99 keys fit).
--   Nothing is sent when a statement changed no group (no rows, or only
--   columns the definition does not read: notes, title, updated_at...).
--   Payloads are built with to_json() from the rows' values; nothing from
--   the data is ever put into SQL text. One notification per statement
--   that changed something; PostgreSQL delivers identical payloads of one
--   transaction once, others each (at COMMIT; none after a ROLLBACK).
--
-- WHICH KEYS: the old and the new rows of each statement (transition
--   tables), so a row that moves between groups dirties both.
--   * member_attendance rows have no key of their own: it is that of their
--     training session (training_session_id), looked up when the trigger
--     fires. Rows of a session deleted in the same statement (ON DELETE
--     CASCADE) find no session; the DELETE trigger of training_sessions
--     sends that session's group instead.
--   * training_sessions: UPDATE sends the groups of the old and the new
--     version, so moving a session to another (category, season) dirties
--     both, together with all its attendance.
--   * UPDATE compares old and new rows on the columns the definition reads
--     (member_attendance: member_id, training_session_id,
--     attendance_status; training_sessions: id, category_id, season_id,
--     status, session_date) and sends only the groups whose input changed.
--     This replaces 004's column list, which PostgreSQL does not allow
--     together with transition tables. If the definition starts reading
--     another column, add it to these comparisons.
--   * NULL keys are skipped: the definition excludes them.
--
-- CONCURRENCY: a member_attendance write names the group its session has
--   when the trigger runs. Were the session moved to another group by a
--   transaction that commits first, refreshd could recompute the new group
--   before the attendance write commits, and the write would reach only
--   the old group. So the attendance trigger takes FOR KEY SHARE on the
--   sessions it looks up (free for INSERT, whose foreign-key check already
--   holds it; it does not block status or date updates), and an UPDATE that
--   moves sessions takes FOR UPDATE on them before it updates them (a
--   BEFORE UPDATE row trigger), which waits for those attendance writers
--   to commit: their write is then visible to the recompute that the
--   move's own notification triggers.
--   A session already locked by another transaction (being moved, being
--   deleted, or locked FOR UPDATE by the application) is not waited for:
--   the UPDATE and DELETE lookups use SKIP LOCKED, and a session skipped
--   makes the statement send '*' (every group) instead of its groups.
--   Waiting there deadlocked a transaction that held its attendance row
--   (SELECT ... FOR UPDATE) beside a DELETE of the session cascading to
--   that row (fixed 2026-12-04, tests/sql.rs), and returned the moved
--   session's old version (the write then named the old group alone).
--   Cost: a session move waits for in-flight attendance writes of that
--   session; an attendance write beside a move, a delete or a locker of
--   its session recomputes every group; a transaction that writes
--   attendance of a session and then updates that session can deadlock
--   with a concurrent move of it (one of the two is rolled back and may
--   retry). Limit: writers at REPEATABLE READ or SERIALIZABLE whose
--   snapshot predates a committed move still see the old group; a
--   periodic full recompute (a refreshd schedule) covers them.
--   Both trigger functions are SECURITY DEFINER (fixed search_path), so
--   writers need no UPDATE privilege on training_sessions for that lock,
--   and row-level security on training_sessions cannot hide a session
--   (and so a key) from the lookup.
--
-- Writes that fire no triggers (session_replication_role = replica, as
-- refreshd_demo's fast loader and logical replication use) send no keys:
-- whoever does that must NOTIFY attendance_keys, '*' (the demo loader does).
--
-- The live table is (re)filled from the definition whenever this file
-- runs, in install.sql's transaction: readers see the old rows until it
-- commits, never an empty table; writers of the base tables wait (the
-- trigger DDL below locks them), so no change slips between the fill and
-- the triggers. refreshd also recomputes everything at its start.
--
-- COMPARING live with def: last_refreshed is now() of the transaction
-- that computed a row (the MV's column, kept for the same columns), so it
-- differs by design; compare every other column, e.g.
--   (SELECT to_jsonb(l) - 'last_refreshed' FROM public.attendance_statistics_live l
--    EXCEPT ALL
--    SELECT to_jsonb(d) - 'last_refreshed' FROM public.attendance_statistics_def d)
--   UNION ALL (the same the other way round)      -- empty when equal
-- validate.sql does this.
--
-- Idempotent: CREATE OR REPLACE / IF NOT EXISTS / DROP TRIGGER IF EXISTS.
-- CREATE OR REPLACE VIEW cannot change the definition's columns: to change
-- them, run rollback.sql first. Plain SQL only, no psql meta-commands.
-- =====================================================

-- The definition. Keep it identical to 002's materialized view (validate.sql
-- compares the two): the keyed table and the view then answer the same.
CREATE OR REPLACE VIEW public.attendance_statistics_def AS
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
       -- In the live table: when refreshd last recomputed the group.
       now()                                       AS last_refreshed
FROM session_stats s
LEFT JOIN attendance_stats a
       ON a.category_id = s.category_id
      AND a.season_id   = s.season_id;

COMMENT ON VIEW public.attendance_statistics_def IS
    'Definition of public.attendance_statistics_live (the query of attendance_statistics_summary); refreshd recomputes the live table from it per (category_id, season_id).';

-- What readers read. Same columns, types and order as the definition;
-- the key is its primary key (the definition groups by it, so it is
-- unique there, and never NULL).
CREATE TABLE IF NOT EXISTS public.attendance_statistics_live (
    category_id              uuid        NOT NULL,
    season_id                uuid        NOT NULL,
    total_sessions           bigint,
    completed_sessions       bigint,
    planned_sessions         bigint,
    cancelled_sessions       bigint,
    completion_rate          numeric,
    total_attendance_records bigint,
    present_count            bigint,
    absent_count             bigint,
    late_count               bigint,
    excused_count            bigint,
    attendance_rate          numeric,
    unique_members           bigint,
    last_session_date        date,
    -- When refreshd last recomputed this group (now() of its transaction).
    last_refreshed           timestamptz,
    CONSTRAINT attendance_statistics_live_pkey PRIMARY KEY (category_id, season_id)
);

COMMENT ON TABLE public.attendance_statistics_live IS
    'Attendance statistics per (category_id, season_id), kept equal to public.attendance_statistics_def by refreshd (kind = "keyed"), fed by channel attendance_keys.';

-- The materialized view's other two indexes, for the same readers.
CREATE INDEX IF NOT EXISTS idx_attendance_statistics_live_season
    ON public.attendance_statistics_live (season_id);
CREATE INDEX IF NOT EXISTS idx_attendance_statistics_live_last_session
    ON public.attendance_statistics_live (last_session_date DESC NULLS LAST);

-- The trigger functions. Each statement is one query that finds the
-- changed groups and builds the payload: the sorted, distinct, non-NULL
-- keys as compact JSON ('[' || string_agg(one key) || ']'), NULL when there
-- is none; '*' replaces a payload over 7,999 bytes (NOTIFY refuses 8,000
-- and more with the default 8 kB block size; uuids are ASCII, so bytes =
-- characters). One query, not a helper function: a second query per
-- statement cost 1-row inserts about half again the trigger's time.

-- member_attendance: the groups of the sessions of the changed rows.
CREATE OR REPLACE FUNCTION public.attendance_keys_from_member_attendance()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_payload text;
BEGIN
    -- Transition tables: new_rows (INSERT, UPDATE), old_rows (UPDATE, DELETE).
    -- FOR KEY SHARE on the sessions looked up: a concurrent move of them to
    -- another group waits for this transaction (see CONCURRENCY in the
    -- header). For INSERT the foreign-key check already holds it; UPDATE
    -- and DELETE skip a session another transaction holds, and then send
    -- '*' (a session visible but not locked: skipped).
    IF TG_OP = 'INSERT' THEN
        SELECT '[' || string_agg('[' || to_json(k.category_id)::text || ',' || to_json(k.season_id)::text || ']',
                                 ',' ORDER BY k.category_id, k.season_id) || ']'
          INTO v_payload
        FROM (SELECT DISTINCT s.category_id, s.season_id
              FROM (SELECT ts.category_id, ts.season_id
                    FROM public.training_sessions ts
                    WHERE ts.id IN (SELECT n.training_session_id FROM new_rows n)
                    FOR KEY SHARE OF ts) AS s
              WHERE s.category_id IS NOT NULL AND s.season_id IS NOT NULL) AS k;
    ELSIF TG_OP = 'DELETE' THEN
        WITH ids AS (SELECT DISTINCT o.training_session_id AS id FROM old_rows o),
             locked AS (SELECT ts.id, ts.category_id, ts.season_id
                        FROM public.training_sessions ts
                        WHERE ts.id IN (SELECT i.id FROM ids i)
                        FOR KEY SHARE OF ts SKIP LOCKED)
        SELECT CASE WHEN EXISTS (SELECT 1 FROM public.training_sessions ts
                                 WHERE ts.id IN (SELECT i.id FROM ids i)
                                   AND ts.id NOT IN (SELECT l.id FROM locked l))
                    THEN '*'
                    ELSE (SELECT '[' || string_agg('[' || to_json(k.category_id)::text || ',' || to_json(k.season_id)::text || ']',
                                                   ',' ORDER BY k.category_id, k.season_id) || ']'
                          FROM (SELECT DISTINCT l.category_id, l.season_id FROM locked l
                                WHERE l.category_id IS NOT NULL AND l.season_id IS NOT NULL) AS k)
               END
          INTO v_payload;
    ELSE
        -- Only rows whose columns read by the definition changed, old and new.
        WITH ids AS (
                 SELECT DISTINCT d.training_session_id AS id
                 FROM ((SELECT o.member_id, o.training_session_id, o.attendance_status FROM old_rows o
                        EXCEPT ALL
                        SELECT n.member_id, n.training_session_id, n.attendance_status FROM new_rows n)
                       UNION ALL
                       (SELECT n.member_id, n.training_session_id, n.attendance_status FROM new_rows n
                        EXCEPT ALL
                        SELECT o.member_id, o.training_session_id, o.attendance_status FROM old_rows o)) AS d),
             locked AS (SELECT ts.id, ts.category_id, ts.season_id
                        FROM public.training_sessions ts
                        WHERE ts.id IN (SELECT i.id FROM ids i)
                        FOR KEY SHARE OF ts SKIP LOCKED)
        SELECT CASE WHEN EXISTS (SELECT 1 FROM public.training_sessions ts
                                 WHERE ts.id IN (SELECT i.id FROM ids i)
                                   AND ts.id NOT IN (SELECT l.id FROM locked l))
                    THEN '*'
                    ELSE (SELECT '[' || string_agg('[' || to_json(k.category_id)::text || ',' || to_json(k.season_id)::text || ']',
                                                   ',' ORDER BY k.category_id, k.season_id) || ']'
                          FROM (SELECT DISTINCT l.category_id, l.season_id FROM locked l
                                WHERE l.category_id IS NOT NULL AND l.season_id IS NOT NULL) AS k)
               END
          INTO v_payload;
    END IF;

    IF octet_length(v_payload) > 7999 THEN
        v_payload := '*';
    END IF;
    IF v_payload IS NOT NULL THEN
        PERFORM pg_catalog.pg_notify('attendance_keys', v_payload);
    END IF;
    RETURN NULL;  -- AFTER ... FOR EACH STATEMENT: return value is ignored
END;
$$;

COMMENT ON FUNCTION public.attendance_keys_from_member_attendance() IS
    'Statement-level trigger with transition tables: NOTIFY attendance_keys with the (category_id, season_id) groups of the changed member_attendance rows.';

-- training_sessions: the groups of the changed rows themselves.
CREATE OR REPLACE FUNCTION public.attendance_keys_from_training_sessions()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_payload text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT '[' || string_agg('[' || to_json(k.category_id)::text || ',' || to_json(k.season_id)::text || ']',
                                 ',' ORDER BY k.category_id, k.season_id) || ']'
          INTO v_payload
        FROM (SELECT DISTINCT n.category_id, n.season_id FROM new_rows n
              WHERE n.category_id IS NOT NULL AND n.season_id IS NOT NULL) AS k;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT '[' || string_agg('[' || to_json(k.category_id)::text || ',' || to_json(k.season_id)::text || ']',
                                 ',' ORDER BY k.category_id, k.season_id) || ']'
          INTO v_payload
        FROM (SELECT DISTINCT o.category_id, o.season_id FROM old_rows o
              WHERE o.category_id IS NOT NULL AND o.season_id IS NOT NULL) AS k;
    ELSE
        -- Sessions moved to another group were locked FOR UPDATE before
        -- they were updated (attendance_keys_lock_moved_session, see the
        -- header). Only rows whose columns read by the definition changed, old and new.
        SELECT '[' || string_agg('[' || to_json(k.category_id)::text || ',' || to_json(k.season_id)::text || ']',
                                 ',' ORDER BY k.category_id, k.season_id) || ']'
          INTO v_payload
        FROM (SELECT DISTINCT d.category_id, d.season_id
              FROM ((SELECT o.id, o.category_id, o.season_id, o.status, o.session_date FROM old_rows o
                     EXCEPT ALL
                     SELECT n.id, n.category_id, n.season_id, n.status, n.session_date FROM new_rows n)
                    UNION ALL
                    (SELECT n.id, n.category_id, n.season_id, n.status, n.session_date FROM new_rows n
                     EXCEPT ALL
                     SELECT o.id, o.category_id, o.season_id, o.status, o.session_date FROM old_rows o)) AS d
              WHERE d.category_id IS NOT NULL AND d.season_id IS NOT NULL) AS k;
    END IF;

    IF octet_length(v_payload) > 7999 THEN
        v_payload := '*';
    END IF;
    IF v_payload IS NOT NULL THEN
        PERFORM pg_catalog.pg_notify('attendance_keys', v_payload);
    END IF;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION public.attendance_keys_from_training_sessions() IS
    'Statement-level trigger with transition tables: NOTIFY attendance_keys with the old and new (category_id, season_id) groups of the changed training_sessions rows.';

-- A session moved to another group, locked FOR UPDATE before the UPDATE
-- writes its new version (see the header): the lock waits for the
-- attendance writers holding FOR KEY SHARE on it, and a writer arriving
-- later finds it locked (and sends '*'), or, inserting, waits for this
-- one in its foreign-key check and then reads the new version. Taken after
-- the UPDATE (in the statement trigger, as before 2026-12-04), the lock
-- sat on the new version only: a later writer's key-share lock on the old
-- version waited for the move, then returned the old version, and the
-- write named the old group alone.
CREATE OR REPLACE FUNCTION public.attendance_keys_lock_moved_session()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM public.training_sessions ts WHERE ts.ctid = OLD.ctid FOR UPDATE OF ts;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION public.attendance_keys_lock_moved_session() IS
    'BEFORE UPDATE row trigger on training_sessions moving a session to another (category_id, season_id) group: locks the row FOR UPDATE before it is updated, so attendance writers holding FOR KEY SHARE on it commit first; later ones find it locked and send every group (UPDATE, DELETE) or wait and read the moved row (INSERT, in its foreign-key check).';

-- TRUNCATE has no transition tables and empties every group.
CREATE OR REPLACE FUNCTION public.attendance_keys_all()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('attendance_keys', '*');
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION public.attendance_keys_all() IS
    'Statement-level TRUNCATE trigger: NOTIFY attendance_keys, ''*'' (every group).';

-- One trigger per event: PostgreSQL allows transition tables only on
-- triggers with a single event and no column list. DROP + CREATE as in
-- 004; inside install.sql's transaction no write slips between them.
-- The names avoid "att_stats", which names 004's six triggers only.
DROP TRIGGER IF EXISTS attendance_keys_on_attendance_insert ON public.member_attendance;
CREATE TRIGGER attendance_keys_on_attendance_insert
    AFTER INSERT ON public.member_attendance
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION public.attendance_keys_from_member_attendance();

DROP TRIGGER IF EXISTS attendance_keys_on_attendance_update ON public.member_attendance;
CREATE TRIGGER attendance_keys_on_attendance_update
    AFTER UPDATE ON public.member_attendance
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION public.attendance_keys_from_member_attendance();

DROP TRIGGER IF EXISTS attendance_keys_on_attendance_delete ON public.member_attendance;
CREATE TRIGGER attendance_keys_on_attendance_delete
    AFTER DELETE ON public.member_attendance
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION public.attendance_keys_from_member_attendance();

DROP TRIGGER IF EXISTS attendance_keys_on_attendance_truncate ON public.member_attendance;
CREATE TRIGGER attendance_keys_on_attendance_truncate
    AFTER TRUNCATE ON public.member_attendance
    FOR EACH STATEMENT
    EXECUTE FUNCTION public.attendance_keys_all();

DROP TRIGGER IF EXISTS attendance_keys_on_session_insert ON public.training_sessions;
CREATE TRIGGER attendance_keys_on_session_insert
    AFTER INSERT ON public.training_sessions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION public.attendance_keys_from_training_sessions();

DROP TRIGGER IF EXISTS attendance_keys_on_session_update ON public.training_sessions;
CREATE TRIGGER attendance_keys_on_session_update
    AFTER UPDATE ON public.training_sessions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION public.attendance_keys_from_training_sessions();

DROP TRIGGER IF EXISTS attendance_keys_on_session_move ON public.training_sessions;
CREATE TRIGGER attendance_keys_on_session_move
    BEFORE UPDATE OF category_id, season_id ON public.training_sessions
    FOR EACH ROW
    WHEN (OLD.category_id IS DISTINCT FROM NEW.category_id
          OR OLD.season_id IS DISTINCT FROM NEW.season_id)
    EXECUTE FUNCTION public.attendance_keys_lock_moved_session();

DROP TRIGGER IF EXISTS attendance_keys_on_session_delete ON public.training_sessions;
CREATE TRIGGER attendance_keys_on_session_delete
    AFTER DELETE ON public.training_sessions
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION public.attendance_keys_from_training_sessions();

DROP TRIGGER IF EXISTS attendance_keys_on_session_truncate ON public.training_sessions;
CREATE TRIGGER attendance_keys_on_session_truncate
    AFTER TRUNCATE ON public.training_sessions
    FOR EACH STATEMENT
    EXECUTE FUNCTION public.attendance_keys_all();

-- Fill the table: a full recompute in one statement pair. SHARE ROW
-- EXCLUSIVE lets readers read the old rows meanwhile, and waits for (then
-- blocks) a concurrent keyed refresh by refreshd, whose rows the DELETE
-- would otherwise miss.
LOCK TABLE public.attendance_statistics_live IN SHARE ROW EXCLUSIVE MODE;
DELETE FROM public.attendance_statistics_live;
INSERT INTO public.attendance_statistics_live
SELECT * FROM public.attendance_statistics_def;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        GRANT SELECT ON public.attendance_statistics_live TO authenticated;
    END IF;
END;
$$;
