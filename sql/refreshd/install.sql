-- =====================================================
-- refreshd: its own schema — install (entry point)
-- =====================================================
-- Creates : see 001_control.sql (schema refreshd, refreshd.force,
--           refreshd.force_requests). `refreshd init --apply` installs the
--           same SQL; this file is for installing it by hand:
--             psql "$DATABASE_URL" -f sql/refreshd/install.sql
-- Undo    : psql "$DATABASE_URL" -f sql/refreshd/rollback.sql
-- Idempotent, one transaction.
-- =====================================================

\set ON_ERROR_STOP on

BEGIN;

\ir 001_control.sql

COMMIT;
