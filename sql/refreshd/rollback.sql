-- =====================================================
-- refreshd: its own schema — rollback
-- =====================================================
-- Drops   : refreshd.force(text), table refreshd.force_requests (requests
--           not yet carried out are lost), and schema refreshd when it is
--           then empty. No CASCADE: anything else a user put in schema
--           refreshd stops this script with the dependency named.
-- Run     : psql "$DATABASE_URL" -f sql/refreshd/rollback.sql  (idempotent)
-- =====================================================

\set ON_ERROR_STOP on

BEGIN;

\ir 901_rollback_control.sql

COMMIT;
