-- =====================================================
-- refreshd: its own schema — SQL control (refreshd.force)
-- =====================================================
-- Purpose : Lets a session force a refresh from SQL in one line,
--             SELECT refreshd.force('schema.view');   -- or '*' for all
--           even from a session that ends right after its commit
--           (psql -c): the request is a row, not a NOTIFY whose sender
--           refreshd would have to look up before the session is gone.
-- Creates : schema refreshd; table refreshd.force_requests (the durable
--           requests: refreshd's leader consumes them with
--           DELETE ... RETURNING when woken, and at every start and
--           reconnect, so a request made while no refreshd runs is
--           carried out when one starts); function refreshd.force(text).
-- Who     : PostgreSQL's privileges decide. EXECUTE on refreshd.force is
--           revoked from PUBLIC; the installing role (refreshd's own, when
--           installed by `refreshd init --apply`) owns it. Grant it to the
--           roles of control_roles:
--             GRANT USAGE ON SCHEMA refreshd TO some_role;
--             GRANT EXECUTE ON FUNCTION refreshd.force(text) TO some_role;
--           Nobody else can write the request table (the function runs as
--           its owner, SECURITY DEFINER, with a fixed search_path).
-- Wake-up : NOTIFY refreshd_force (constant payload: folded within one
--           transaction). The payload is not read; the table is.
-- Names   : schema-qualified, as in refreshd's configuration, parsed as SQL
--           parses them ("Sales"."Daily Totals" is one name); a name that
--           is not a materialized view or table is refused with an error,
--           and so is one no refreshd manages once one has led (the table
--           refreshd.managed_views, written by each deployment's leader).
--           The request stores the name in canonical form (quote_ident).
-- Plain SQL only (no psql meta-commands); idempotent.
-- =====================================================

CREATE SCHEMA IF NOT EXISTS refreshd;
COMMENT ON SCHEMA refreshd IS 'refreshd: change capture and control (refreshd init --apply); refreshd reads and writes it';

CREATE TABLE IF NOT EXISTS refreshd.force_requests (
    id           bigserial   PRIMARY KEY,
    view_name    text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    requested_by name        NOT NULL DEFAULT SESSION_USER
);
COMMENT ON TABLE refreshd.force_requests IS 'refreshd: forced refreshes waiting for the leader (written by refreshd.force, consumed by refreshd)';
REVOKE ALL ON TABLE refreshd.force_requests FROM PUBLIC;
REVOKE ALL ON SEQUENCE refreshd.force_requests_id_seq FROM PUBLIC;

-- The views refreshd manages, written by each deployment's leader (its
-- ha.lock_name) when it starts leading and at each reload: refreshd.force
-- refuses a name none of them manages. Empty until a refreshd has led.
CREATE TABLE IF NOT EXISTS refreshd.managed_views (
    deployment text NOT NULL,
    view_name  text NOT NULL,
    PRIMARY KEY (deployment, view_name)
);
COMMENT ON TABLE refreshd.managed_views IS 'refreshd: the views each refreshd deployment (ha.lock_name) manages, written by its leader; refreshd.force refuses other names';
REVOKE ALL ON TABLE refreshd.managed_views FROM PUBLIC;

CREATE OR REPLACE FUNCTION refreshd.force(view text)
RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel  regclass;
    kind "char";
    canonical text;
BEGIN
    IF view IS NULL THEN
        RAISE EXCEPTION 'refreshd.force: the view name is NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF view = '*' THEN
        canonical := '*';
    ELSE
        -- to_regclass parses the name as SQL does and never raises for a
        -- missing relation; with this search_path an unqualified name only
        -- finds pg_catalog's, so names must be schema-qualified.
        BEGIN
            rel := to_regclass(view);
        EXCEPTION WHEN invalid_name OR syntax_error OR invalid_parameter_value THEN
            rel := NULL;
        END;
        SELECT c.relkind,
               quote_ident(n.nspname) || '.' || quote_ident(c.relname)
          INTO kind, canonical
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = rel;
        IF rel IS NULL OR kind NOT IN ('m', 'r', 'p') THEN
            RAISE EXCEPTION 'refreshd.force: % is not a materialized view or table (give the schema-qualified name of a view refreshd manages, or ''*'')',
                quote_literal(view)
                USING ERRCODE = 'undefined_table';
        END IF;
        -- Once a refreshd has led, only the views some deployment manages.
        IF EXISTS (SELECT 1 FROM refreshd.managed_views)
           AND NOT EXISTS (SELECT 1 FROM refreshd.managed_views m WHERE m.view_name = canonical) THEN
            RAISE EXCEPTION 'refreshd.force: % is not a view refreshd manages (refreshd.managed_views lists them)',
                quote_literal(view)
                USING ERRCODE = 'undefined_table';
        END IF;
    END IF;
    INSERT INTO refreshd.force_requests (view_name) VALUES (canonical);
    PERFORM pg_notify('refreshd_force', '');
END
$$;
COMMENT ON FUNCTION refreshd.force(text) IS 'refreshd: forces a refresh of one view (schema-qualified) or of all (''*''), durably; EXECUTE is granted by hand';
REVOKE ALL ON FUNCTION refreshd.force(text) FROM PUBLIC;
