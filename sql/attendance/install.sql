-- =====================================================
-- refreshd: Attendance Statistics — install (entry point)
-- =====================================================
-- Purpose : Creates everything the attendance statistics seed names
--           (materialized view, 7 functions, 6 notify triggers,
--           trigger-info view) plus the base tables it assumes, and the
--           keyed variant of the statistics (definition view, live table,
--           8 key-sending triggers on channel attendance_keys).
-- Creates : see 001_base_tables.sql .. 005_keyed_statistics.sql
-- Run     : psql "$DATABASE_URL" -f sql/attendance/install.sql
--           then  psql "$DATABASE_URL" -f sql/attendance/validate.sql
-- Undo    : psql "$DATABASE_URL" -f sql/attendance/rollback.sql
--
-- Idempotent: every step is IF NOT EXISTS / OR REPLACE / DROP IF EXISTS,
-- so running it twice, or after rollback.sql, is safe.
-- One transaction: either everything lands or nothing does, and writers
-- on the base tables cannot slip a change in between a trigger's DROP and
-- its re-CREATE (they wait for the COMMIT).
--
-- The numbered files contain plain SQL only (no psql meta-commands), so a
-- program may also execute them in order itself instead of using this file.
-- =====================================================

\set ON_ERROR_STOP on

BEGIN;

\ir 001_base_tables.sql
\ir 002_statistics_mv.sql
\ir 003_functions.sql
\ir 004_triggers.sql
\ir 005_keyed_statistics.sql

COMMIT;

\echo 'Attendance statistics installed. Next: psql -f sql/attendance/validate.sql'
