-- =====================================================
-- refreshd: demo data generators — install (entry point)
-- =====================================================
-- Purpose : Synthetic, deterministic data for both areas, and small random
--           writes for a live demo stream (refreshd demo).
-- Creates : schema refreshd_demo with
--             generate_attendance(scale numeric) -> text
--             generate_inventory(scale numeric)  -> text
--             write_attendance(n integer)        -> integer
--             write_inventory(n integer)         -> integer
--           (see 001_demo_functions.sql)
-- Needs   : sql/attendance/install.sql and sql/inventory/install.sql first.
-- Run     : psql "$DATABASE_URL" -f sql/demo/install.sql
--           psql "$DATABASE_URL" -c "SELECT refreshd_demo.generate_attendance(1)"
--           psql "$DATABASE_URL" -c "SELECT refreshd_demo.generate_inventory(1)"
--           psql "$DATABASE_URL" -c "SELECT refreshd_demo.write_attendance(10)"
-- Remove  : DROP SCHEMA refreshd_demo CASCADE;  (the generated rows stay in
--           the area tables; generate_* with a new scale replaces them)
--
-- Meant for throwaway databases. Idempotent; one transaction; the numbered
-- file is plain SQL so a program can run it without psql.
-- =====================================================

\set ON_ERROR_STOP on

BEGIN;

\ir 001_demo_functions.sql

COMMIT;

\echo 'refreshd_demo installed. Next: SELECT refreshd_demo.generate_attendance(0.01), refreshd_demo.generate_inventory(0.01);'
