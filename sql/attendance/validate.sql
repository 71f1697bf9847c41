-- =====================================================
-- refreshd: Attendance Statistics — validation
-- =====================================================
-- Purpose : Proves that install.sql left every object in the shape
--           refreshd relies on. Read-only.
-- Checks  : 1 base tables and columns
--           2 materialized view: exists, populated, columns, inputs limited
--             to training_sessions + member_attendance
--           3 indexes: idx_att_stats_summary_pk UNIQUE on exactly
--             (category_id, season_id), valid, no predicate/expressions
--             (what REFRESH CONCURRENTLY needs), >= 3 indexes in total
--           4 the seed's 7 functions with their signatures and volatility
--           5 the 6 att_stats triggers: AFTER, FOR EACH STATEMENT, enabled,
--             right events, and the UPDATE column list covering every
--             training_sessions column the view reads
--           6 trigger function notifies refresh_attendance_stats, constant payload
--           7 attendance_stats_trigger_info lists the 6 triggers
-- Run     : psql "$DATABASE_URL" -f sql/attendance/validate.sql
--           Any failed check raises an exception; psql stops and exits 3.
--           The last line is printed only when everything passed.
-- =====================================================

\set ON_ERROR_STOP on
\set QUIET on

BEGIN READ ONLY;

\echo '===== Attendance statistics validation ====='

\echo 'Section 1: base tables'
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT * FROM (VALUES
            ('categories',        ARRAY['id','name']),
            ('seasons',           ARRAY['id','name','is_active']),
            ('members',           ARRAY['id','category_id','first_name','last_name']),
            ('training_sessions', ARRAY['id','category_id','season_id','session_date','status']),
            ('member_attendance', ARRAY['id','member_id','training_session_id','attendance_status','recorded_at'])
        ) AS v(tbl, cols)
    LOOP
        IF to_regclass('public.' || r.tbl) IS NULL THEN
            RAISE EXCEPTION '✗ FAIL: table public.% is missing', r.tbl;
        END IF;
        IF EXISTS (
            SELECT 1 FROM unnest(r.cols) AS c(col)
            WHERE NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_attribute a
                WHERE a.attrelid = ('public.' || r.tbl)::regclass
                  AND a.attname = c.col AND a.attnum > 0 AND NOT a.attisdropped))
        THEN
            RAISE EXCEPTION '✗ FAIL: public.% lacks one of the columns %', r.tbl, r.cols;
        END IF;
    END LOOP;

    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index i
        WHERE i.indrelid = 'public.member_attendance'::regclass
          AND i.indisunique
          AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
               FROM pg_catalog.pg_attribute a
               WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[]))
              = ARRAY['member_id', 'training_session_id'])
    THEN
        RAISE EXCEPTION '✗ FAIL: member_attendance has no UNIQUE (member_id, training_session_id)';
    END IF;
    RAISE NOTICE '✓ base tables present';
END;
$$;

\echo 'Section 2: materialized view'
DO $$
DECLARE
    v_oid     oid := to_regclass('public.attendance_statistics_summary');
    v_missing text[];
    v_inputs  text[];
BEGIN
    IF v_oid IS NULL OR (SELECT relkind FROM pg_catalog.pg_class WHERE oid = v_oid) <> 'm' THEN
        RAISE EXCEPTION '✗ FAIL: public.attendance_statistics_summary is not a materialized view';
    END IF;
    IF NOT (SELECT relispopulated FROM pg_catalog.pg_class WHERE oid = v_oid) THEN
        RAISE EXCEPTION '✗ FAIL: attendance_statistics_summary is not populated (REFRESH it once without CONCURRENTLY)';
    END IF;

    SELECT array_agg(c) INTO v_missing
    FROM unnest(ARRAY['category_id','season_id','total_sessions','completed_sessions',
                      'completion_rate','total_attendance_records','present_count',
                      'absent_count','late_count','excused_count','attendance_rate',
                      'unique_members','last_session_date','last_refreshed']) AS c
    WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = v_oid AND a.attname = c AND NOT a.attisdropped);
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION '✗ FAIL: attendance_statistics_summary lacks columns %', v_missing;
    END IF;

    -- Every relation the view's query reads, from its rewrite rule.
    SELECT array_agg(DISTINCT d.refobjid::regclass::text ORDER BY d.refobjid::regclass::text)
      INTO v_inputs
    FROM pg_catalog.pg_rewrite rw
    JOIN pg_catalog.pg_depend d
      ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = rw.oid
     AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> rw.ev_class
    WHERE rw.ev_class = v_oid;
    IF v_inputs IS DISTINCT FROM ARRAY['member_attendance', 'training_sessions']
       AND v_inputs IS DISTINCT FROM ARRAY['public.member_attendance', 'public.training_sessions'] THEN
        RAISE EXCEPTION '✗ FAIL: attendance_statistics_summary reads %, expected only member_attendance and training_sessions (the only tables with att_stats triggers)', v_inputs;
    END IF;
    RAISE NOTICE '✓ materialized view exists, is populated, reads only %', v_inputs;
END;
$$;

\echo 'Section 3: indexes'
DO $$
DECLARE
    v_idx   oid := to_regclass('public.idx_att_stats_summary_pk');
    v_cols  text[];
    v_count int;
BEGIN
    IF v_idx IS NULL THEN
        RAISE EXCEPTION '✗ FAIL: index idx_att_stats_summary_pk is missing';
    END IF;
    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO v_cols
    FROM pg_catalog.pg_index i
    CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
    LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indexrelid = v_idx;

    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index i
        WHERE i.indexrelid = v_idx
          AND i.indrelid = 'public.attendance_statistics_summary'::regclass
          AND i.indisunique AND i.indisvalid AND i.indisready
          AND i.indpred IS NULL AND i.indexprs IS NULL)
       OR v_cols IS DISTINCT FROM ARRAY['category_id', 'season_id']
    THEN
        RAISE EXCEPTION '✗ FAIL: idx_att_stats_summary_pk must be a valid UNIQUE index on exactly (category_id, season_id) without predicate or expressions; found columns %', v_cols;
    END IF;

    SELECT count(*) INTO v_count FROM pg_catalog.pg_index
    WHERE indrelid = 'public.attendance_statistics_summary'::regclass;
    IF v_count < 3 THEN
        RAISE EXCEPTION '✗ FAIL: expected at least 3 indexes on attendance_statistics_summary, found %', v_count;
    END IF;
    RAISE NOTICE '✓ unique index on (category_id, season_id), % indexes in total', v_count;
END;
$$;

\echo 'Section 4: functions'
DO $$
DECLARE
    r record;
    v_oid regprocedure;
BEGIN
    FOR r IN
        SELECT * FROM (VALUES
            ('public.get_member_attendance_stats(uuid, uuid)',       's'),
            ('public.get_attendance_trends(uuid, uuid, integer)',    's'),
            ('public.get_training_session_stats(uuid, uuid)',        's'),
            ('public.refresh_attendance_statistics_summary()',       'v'),
            ('public.scheduled_refresh_attendance_stats()',          'v'),
            ('public.force_refresh_attendance_stats()',              'v'),
            ('public.trigger_refresh_attendance_stats()',            'v')
        ) AS v(sig, volatility)
    LOOP
        v_oid := to_regprocedure(r.sig);
        IF v_oid IS NULL THEN
            RAISE EXCEPTION '✗ FAIL: function % is missing', r.sig;
        END IF;
        IF (SELECT provolatile FROM pg_catalog.pg_proc WHERE oid = v_oid) <> r.volatility THEN
            RAISE EXCEPTION '✗ FAIL: function % should have provolatile = %', r.sig, r.volatility;
        END IF;
    END LOOP;
    IF (SELECT prorettype FROM pg_catalog.pg_proc
        WHERE oid = 'public.trigger_refresh_attendance_stats()'::regprocedure) <> 'pg_catalog.trigger'::regtype THEN
        RAISE EXCEPTION '✗ FAIL: trigger_refresh_attendance_stats() must return trigger';
    END IF;
    RAISE NOTICE '✓ 7 functions present with the expected signatures';
END;
$$;

\echo 'Section 5: triggers'
DO $$
DECLARE
    r record;
    t record;
    v_count   int;
    v_needed  text[];
    v_listed  text[];
BEGIN
    SELECT count(*) INTO v_count FROM pg_catalog.pg_trigger
    WHERE tgname LIKE '%att\_stats%' AND NOT tgisinternal;
    IF v_count <> 6 THEN
        RAISE EXCEPTION '✗ FAIL: expected 6 att_stats triggers, found %', v_count;
    END IF;

    -- tgtype bits: 1 ROW, 2 BEFORE, 4 INSERT, 8 DELETE, 16 UPDATE, 32 TRUNCATE, 64 INSTEAD
    FOR r IN
        SELECT * FROM (VALUES
            ('refresh_att_stats_on_attendance_insert', 'public.member_attendance',  4),
            ('refresh_att_stats_on_attendance_update', 'public.member_attendance', 16),
            ('refresh_att_stats_on_attendance_delete', 'public.member_attendance', 8 | 32),
            ('refresh_att_stats_on_session_status',    'public.training_sessions', 16),
            ('refresh_att_stats_on_session_insert',    'public.training_sessions',  4),
            ('refresh_att_stats_on_session_delete',    'public.training_sessions', 8 | 32)
        ) AS v(name, tbl, events)
    LOOP
        SELECT tg.* INTO t FROM pg_catalog.pg_trigger tg
        WHERE tg.tgname = r.name AND tg.tgrelid = r.tbl::regclass;
        IF NOT FOUND THEN
            RAISE EXCEPTION '✗ FAIL: trigger % on % is missing', r.name, r.tbl;
        END IF;
        IF t.tgtype & 1 <> 0 THEN
            RAISE EXCEPTION '✗ FAIL: trigger % is FOR EACH ROW; must be FOR EACH STATEMENT', r.name;
        END IF;
        IF t.tgtype & (2 | 64) <> 0 THEN
            RAISE EXCEPTION '✗ FAIL: trigger % must be AFTER', r.name;
        END IF;
        IF t.tgtype & (4 | 8 | 16 | 32) <> r.events THEN
            RAISE EXCEPTION '✗ FAIL: trigger % fires on event bits %, expected %', r.name, t.tgtype & 60, r.events;
        END IF;
        IF t.tgenabled = 'D' THEN
            RAISE EXCEPTION '✗ FAIL: trigger % is disabled', r.name;
        END IF;
        IF t.tgfoid <> 'public.trigger_refresh_attendance_stats()'::regprocedure THEN
            RAISE EXCEPTION '✗ FAIL: trigger % does not call trigger_refresh_attendance_stats()', r.name;
        END IF;
    END LOOP;

    -- member_attendance's UPDATE trigger must not be limited to columns.
    IF (SELECT cardinality(tgattr::int2[]) FROM pg_catalog.pg_trigger
        WHERE tgname = 'refresh_att_stats_on_attendance_update'
          AND tgrelid = 'public.member_attendance'::regclass) > 0 THEN
        RAISE EXCEPTION '✗ FAIL: refresh_att_stats_on_attendance_update must fire on UPDATE of any column';
    END IF;

    -- The session UPDATE trigger must list every training_sessions column
    -- the view depends on; otherwise such an UPDATE would go unnoticed.
    SELECT array_agg(DISTINCT a.attname::text ORDER BY a.attname::text) INTO v_needed
    FROM pg_catalog.pg_rewrite rw
    JOIN pg_catalog.pg_depend d
      ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = rw.oid
     AND d.refclassid = 'pg_catalog.pg_class'::regclass
     AND d.refobjid = 'public.training_sessions'::regclass AND d.refobjsubid > 0
    JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
    WHERE rw.ev_class = 'public.attendance_statistics_summary'::regclass;

    SELECT array_agg(a.attname::text ORDER BY a.attname::text) INTO v_listed
    FROM pg_catalog.pg_trigger tg
    JOIN pg_catalog.pg_attribute a ON a.attrelid = tg.tgrelid AND a.attnum = ANY (tg.tgattr::int2[])
    WHERE tg.tgname = 'refresh_att_stats_on_session_status'
      AND tg.tgrelid = 'public.training_sessions'::regclass;

    -- An empty tgattr means "any column", which covers everything.
    IF v_listed IS NOT NULL AND NOT (v_listed @> v_needed) THEN
        RAISE EXCEPTION '✗ FAIL: refresh_att_stats_on_session_status fires on UPDATE OF %, but the view reads training_sessions columns %', v_listed, v_needed;
    END IF;
    RAISE NOTICE '✓ 6 statement-level AFTER triggers; session UPDATE covers %', v_needed;
END;
$$;

\echo 'Section 6: notification'
DO $$
DECLARE
    v_src text := (SELECT prosrc FROM pg_catalog.pg_proc
                   WHERE oid = 'public.trigger_refresh_attendance_stats()'::regprocedure);
BEGIN
    IF v_src !~ 'pg_notify\s*\(\s*''refresh_attendance_stats''\s*,\s*''[^'']*''\s*\)' THEN
        RAISE EXCEPTION '✗ FAIL: trigger_refresh_attendance_stats() must call pg_notify(''refresh_attendance_stats'', <constant>)';
    END IF;
    RAISE NOTICE '✓ notifies channel refresh_attendance_stats with a constant payload';
END;
$$;

\echo 'Section 7: monitoring view'
DO $$
DECLARE
    v_count int;
BEGIN
    IF to_regclass('public.attendance_stats_trigger_info') IS NULL THEN
        RAISE EXCEPTION '✗ FAIL: view attendance_stats_trigger_info is missing';
    END IF;
    SELECT count(*) INTO v_count FROM public.attendance_stats_trigger_info
    WHERE level = 'STATEMENT' AND enabled;
    IF v_count <> 6 THEN
        RAISE EXCEPTION '✗ FAIL: attendance_stats_trigger_info shows % enabled statement-level triggers, expected 6', v_count;
    END IF;
    RAISE NOTICE '✓ attendance_stats_trigger_info lists the 6 triggers';
END;
$$;

ROLLBACK;

\echo ''
\echo '✓✓✓ ATTENDANCE STATISTICS VALIDATION SUCCESSFUL - ALL VALIDATIONS PASSED ✓✓✓'
