-- refreshd: undo 001_control.sql (plain SQL, idempotent; see rollback.sql).
DROP FUNCTION IF EXISTS refreshd.force(text);
DROP TABLE IF EXISTS refreshd.force_requests;
DROP TABLE IF EXISTS refreshd.managed_views;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'refreshd')
       AND NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'refreshd')
       AND NOT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'refreshd')
       AND NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'refreshd')
    THEN
        DROP SCHEMA refreshd;
    END IF;
END
$$;
