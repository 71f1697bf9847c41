-- =====================================================
-- Attendance Statistics Migration Test Suite
-- =====================================================
-- Source  : the seed's scripts/test_attendance_migrations.sql (attendance
--           statistics migration guide, "Verification & Testing"), copied
--           as is except where marked "FIX (seed)".
-- Run     : psql "$DATABASE_URL" -f sql/attendance/test.sql 2>&1 | tee out
--           Results are '✓ PASS' / '⚠ WARNING' / '⚠ SKIP' / '✗ FAIL' lines
--           (tests 6 and 7 report through NOTICE, i.e. on stderr);
--           CI greps the combined output for FAIL.
-- Needs   : sql/attendance/install.sql applied; tests 4, 6 and 7 need data
--           (e.g. SELECT refreshd_demo.generate_attendance(0.01)).
-- =====================================================

-- FIX (seed): the seed runs without ON_ERROR_STOP, so a missing object
-- (e.g. Test 4 on a missing view) prints an ERROR, no FAIL line, and psql
-- still exits 0. Stop at the first error instead: psql exits 3.
\set ON_ERROR_STOP on

\echo '===== Starting Attendance Statistics Migration Tests ====='
\echo ''

-- Test 1: Materialized View Exists
\echo 'Test 1: Checking materialized view exists...'
SELECT CASE
  WHEN COUNT(*) = 1 THEN '✓ PASS: Materialized view exists'
  ELSE '✗ FAIL: Materialized view not found'
END as result
FROM pg_matviews
WHERE matviewname = 'attendance_statistics_summary';

-- Test 2: Functions Exist
\echo ''
\echo 'Test 2: Checking functions exist...'
SELECT CASE
  WHEN COUNT(*) >= 7 THEN '✓ PASS: All functions created'
  ELSE '✗ FAIL: Missing functions (' || COUNT(*) || '/7)'
END as result
FROM pg_proc
WHERE proname IN (
  'get_member_attendance_stats',
  'get_attendance_trends',
  'get_training_session_stats',
  'trigger_refresh_attendance_stats',
  'refresh_attendance_statistics_summary',
  'scheduled_refresh_attendance_stats',
  'force_refresh_attendance_stats'
);

-- Test 3: Triggers Exist
\echo ''
\echo 'Test 3: Checking triggers exist...'
SELECT CASE
  WHEN COUNT(*) >= 6 THEN '✓ PASS: All triggers created'
  ELSE '✗ FAIL: Missing triggers (' || COUNT(*) || '/6)'
END as result
FROM pg_trigger
WHERE tgname LIKE '%att_stats%';

-- Test 4: Materialized View Has Data
\echo ''
\echo 'Test 4: Checking materialized view has data...'
SELECT CASE
  WHEN COUNT(*) > 0 THEN '✓ PASS: View has ' || COUNT(*) || ' rows'
  ELSE '⚠ WARNING: View is empty (no category/season data)'
END as result
FROM attendance_statistics_summary;

-- Test 5: Indexes Exist
\echo ''
\echo 'Test 5: Checking indexes exist...'
SELECT CASE
  WHEN COUNT(*) >= 3 THEN '✓ PASS: Indexes created (' || COUNT(*) || ')'
  ELSE '✗ FAIL: Missing indexes'
END as result
FROM pg_indexes
WHERE tablename = 'attendance_statistics_summary';

-- Test 6: Function Performance
\echo ''
\echo 'Test 6: Testing function performance...'
DO $$
DECLARE
  start_time TIMESTAMPTZ;
  end_time TIMESTAMPTZ;
  duration INTERVAL;
  cat_id UUID;
  seas_id UUID;
BEGIN
  -- Get a valid category and season
  -- FIX (seed): the seed took any category and any active season
  -- independently, so the pair could have no sessions at all and the
  -- "performance" measured an empty lookup. Take a pair that has sessions,
  -- preferring an active season as the seed intended.
  SELECT ts.category_id, ts.season_id INTO cat_id, seas_id
  FROM training_sessions ts
  JOIN seasons s ON s.id = ts.season_id
  ORDER BY s.is_active DESC, ts.category_id, ts.season_id
  LIMIT 1;

  IF cat_id IS NULL OR seas_id IS NULL THEN
    RAISE NOTICE '⚠ SKIP: No test data available';
    RETURN;
  END IF;

  start_time := clock_timestamp();
  PERFORM * FROM get_member_attendance_stats(cat_id, seas_id);
  end_time := clock_timestamp();
  duration := end_time - start_time;

  IF duration < interval '200 milliseconds' THEN
    RAISE NOTICE '✓ PASS: Function executed in %', duration;
  ELSE
    RAISE NOTICE '⚠ WARNING: Function took % (expected < 200ms)', duration;
  END IF;
END $$;

-- Test 7: Trigger Functionality
\echo ''
\echo 'Test 7: Testing trigger functionality...'
DO $$
DECLARE
  test_member_id UUID;
  test_session_id UUID;
  -- FIX (seed): the seed declared initial_count and new_count and never
  -- used them; inserted_id (see the INSERT below) takes their place.
  inserted_id UUID;
BEGIN
  -- Get test IDs
  SELECT id INTO test_member_id FROM members LIMIT 1;
  SELECT id INTO test_session_id FROM training_sessions LIMIT 1;

  IF test_member_id IS NULL OR test_session_id IS NULL THEN
    RAISE NOTICE '⚠ SKIP: No test data available';
    RETURN;
  END IF;

  -- Test that trigger doesn't cause errors
  BEGIN
    -- FIX (seed): the seed inserted with ON CONFLICT DO NOTHING and then
    -- cleaned up with
    --   DELETE FROM member_attendance WHERE member_id = test_member_id
    --     AND training_session_id = test_session_id
    --     AND recorded_at > NOW() - interval '1 minute';
    -- When the (member, session) pair already existed, the INSERT did
    -- nothing and that DELETE removed the pre-existing row if it had been
    -- recorded in the last minute: real attendance data lost by a test.
    -- Now we remember the id of the row this test inserted (RETURNING) and
    -- delete exactly that row, or nothing if the INSERT did nothing.
    INSERT INTO member_attendance (member_id, training_session_id, attendance_status)
    VALUES (test_member_id, test_session_id, 'present')
    ON CONFLICT DO NOTHING
    RETURNING id INTO inserted_id;

    -- FIX (seed): the seed never fired the UPDATE trigger. Statement-level
    -- triggers fire even when no row matches, so this UPDATE exercises it
    -- while touching at most the row inserted above, never existing data.
    UPDATE member_attendance
    SET attendance_status = 'late'
    WHERE id = inserted_id;

    -- Clean up test data
    DELETE FROM member_attendance
    WHERE id = inserted_id;

    RAISE NOTICE '✓ PASS: Triggers execute without errors';
  EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE '✗ FAIL: Trigger error: %', SQLERRM;
  END;
END $$;

\echo ''
\echo '===== Migration Tests Complete ====='
