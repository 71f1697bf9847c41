//! Views that read a view converted in place: kept across the swap.
//!
//! `--in-place` drops the materialized view and creates a table of the same name (and
//! the rollback does the reverse). PostgreSQL refuses to drop a relation other views
//! read, so the conversion first saves every view and materialized view that reads it,
//! directly or through other views, and drops them, deepest first; once the table is
//! filled, it creates them again from their saved definitions, shallowest first, with
//! their options, owner, privileges (table and column), comments, indexes, triggers,
//! rules, column defaults and statistics objects. Their definitions are printed by
//! `pg_get_viewdef` under `search_path = pg_catalog, pg_temp`, so every name in them
//! is schema-qualified, and run again under the same path: they mean what they meant.
//! A materialized view is created `WITH DATA` (computed from the new table) when it
//! was populated.
//!
//! Both halves are generic `DO` blocks that read the catalog when they run (not when
//! `init` ran): the rollback, applied months later, keeps whatever views read the
//! table then. The saved statements travel from one block to the other in a
//! transaction-local setting (`refreshd.dependents`), so the install needs no
//! temporary table. Anything else that reads the relation (a rule on a table, a
//! function's SQL body) still blocks the DROP, and the transaction fails with
//! PostgreSQL's error, changing nothing.

use super::generate::{dollar, literal};
use crate::pg::ident::QualifiedName;

/// The transaction-local setting that carries the saved statements (a JSON array).
const CARRIER: &str = "refreshd.dependents";

/// Saves and drops every view reading `rel` when it is of `relkind` (`m` before the
/// install's swap, `r` before the rollback's); otherwise nothing. Also saves `rel`'s
/// own privileges (table and column), column comments and index comments, given to
/// what replaces it by [`restore_sql`]. Every saved object's privileges are restored
/// exactly (all its grantees' privileges revoked first: the default privileges of
/// the role running the SQL do not leak in), except that at the install, write
/// privileges (INSERT, UPDATE, DELETE, TRUNCATE) of roles other than the owner are
/// left out on `rel` and on plain views over it without triggers or rules: granted on
/// a materialized view they did nothing, and on a table (or a view a table makes
/// updatable) they would let that role write what refreshd keeps.
pub fn save_and_drop_sql(rel: &QualifiedName, relkind: char) -> String {
    let body = SAVE_AND_DROP
        .replace("{name}", &literal(&rel.quoted()))
        .replace("{relkind}", &literal(&relkind.to_string()))
        .replace("{carrier}", &literal(CARRIER));
    format!("DO {};\n", dollar(&body))
}

/// Creates again, in order, whatever [`save_and_drop_sql`] saved in this transaction.
pub fn restore_sql() -> String {
    format!(
        "DO {};\n",
        dollar(&RESTORE.replace("{carrier}", &literal(CARRIER)))
    )
}

/// The body of [`save_and_drop_sql`]'s `DO` block; `{name}` (the relation, a literal
/// of its quoted name), `{relkind}` and `{carrier}` are filled in.
const SAVE_AND_DROP: &str = r#"DECLARE
    rel pg_catalog.oid := pg_catalog.to_regclass({name});
    path text := pg_catalog.current_setting('search_path');
    install boolean := {relkind} = 'm';
    ddl text[] := '{}';
    later text[] := '{}';
    rules text[] := '{}';
    drops text[] := '{}';
    kind text;
    strip boolean;
    grants text;
    o record;
    x record;
BEGIN
    PERFORM pg_catalog.set_config({carrier}, '', true);
    IF rel IS NULL OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) rel AND c.relkind OPERATOR(pg_catalog.=) {relkind}) THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    FOR o IN
        WITH RECURSIVE dep(oid, lvl) AS (
            SELECT r.ev_class, 1 FROM pg_catalog.pg_depend d
            JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid AND r.rulename = '_RETURN'
            WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
              AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
              AND d.refobjid = rel AND r.ev_class <> rel
            UNION ALL
            SELECT r.ev_class, dep.lvl + 1 FROM dep
            JOIN pg_catalog.pg_depend d ON d.refobjid = dep.oid
              AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
              AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
            JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid AND r.rulename = '_RETURN'
            WHERE r.ev_class <> dep.oid
        ), deepest AS (
            SELECT rel AS oid, 0 AS lvl
            UNION ALL
            SELECT dep.oid, pg_catalog.max(dep.lvl) FROM dep GROUP BY dep.oid
        )
        SELECT c.oid, c.oid::pg_catalog.regclass::text AS name, c.relkind, c.reloptions, c.relacl,
               c.relowner, c.relispopulated, pg_catalog.pg_get_userbyid(c.relowner) AS owner, ts.spcname, am.amname,
               NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
                 AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r WHERE r.ev_class = c.oid AND r.rulename <> '_RETURN') AS plain
        FROM deepest JOIN pg_catalog.pg_class c ON c.oid = deepest.oid
        LEFT JOIN pg_catalog.pg_tablespace ts ON ts.oid = c.reltablespace
        LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
        WHERE c.oid = rel OR c.relkind IN ('v', 'm')
        ORDER BY deepest.lvl, c.oid
    LOOP
        -- Dropped and created again as its owner: only a member of that role may (a
        -- bare "must be able to SET ROLE" named neither the view nor the way out).
        IF o.oid <> rel AND NOT pg_catalog.pg_has_role(CURRENT_USER, o.relowner, 'MEMBER') THEN
            RAISE EXCEPTION 'refreshd: % reads %, and % owns it: converting in place drops and creates it again as its owner, which % may not do (not a member of that role)', o.name, rel::pg_catalog.regclass, o.owner, CURRENT_USER
                USING HINT = 'Run refreshd init as that role or a superuser, or convert beside the materialized view (without --in-place).';
        END IF;
        kind := CASE o.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END;
        strip := install AND (o.oid = rel OR (o.relkind = 'v' AND o.plain));
        IF o.oid <> rel THEN
            ddl := ddl || pg_catalog.format('CREATE %s %s%s%s%s AS %s%s', kind, o.name,
                CASE WHEN o.relkind = 'm' AND o.amname IS NOT NULL AND o.amname <> 'heap' THEN ' USING ' || pg_catalog.quote_ident(o.amname) ELSE '' END,
                CASE WHEN o.reloptions IS NOT NULL THEN ' WITH (' || pg_catalog.array_to_string(o.reloptions, ', ') || ')' ELSE '' END,
                CASE WHEN o.relkind = 'm' AND o.spcname IS NOT NULL THEN ' TABLESPACE ' || pg_catalog.quote_ident(o.spcname) ELSE '' END,
                pg_catalog.rtrim(pg_catalog.pg_get_viewdef(o.oid), E'; \n\t'),
                CASE WHEN o.relkind <> 'm' THEN '' WHEN o.relispopulated THEN ' WITH DATA' ELSE ' WITH NO DATA' END);
            IF o.owner <> CURRENT_USER THEN
                ddl := ddl || pg_catalog.format('ALTER %s %s OWNER TO %I', kind, o.name, o.owner);
            END IF;
        END IF;
        -- Privileges, exactly: unless the object has them already when this runs
        -- (NULL for NULL: no ACL made explicit), whatever it has then (its owner's, the
        -- default privileges of the role running this) is revoked and the saved ones
        -- granted.
        grants := '';
        FOR x IN SELECT a.privilege_type, a.is_grantable,
                CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END AS grantee
            FROM pg_catalog.aclexplode(COALESCE(o.relacl, pg_catalog.acldefault('r', o.relowner))) a
            WHERE NOT (strip AND a.grantee <> o.relowner AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'))
        LOOP
            grants := grants || pg_catalog.format('EXECUTE %L; ', pg_catalog.format('GRANT %s ON TABLE %s TO %s%s',
                x.privilege_type, o.name, x.grantee, CASE WHEN x.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END));
        END LOOP;
        ddl := ddl || pg_catalog.format($f$DO $acl$ DECLARE x record; BEGIN IF (SELECT c.relacl FROM pg_catalog.pg_class c WHERE c.oid = %L::pg_catalog.regclass) IS NOT DISTINCT FROM %L::pg_catalog.aclitem[] THEN RETURN; END IF; FOR x IN SELECT DISTINCT a.grantee FROM pg_catalog.pg_class c, pg_catalog.aclexplode(COALESCE(c.relacl, pg_catalog.acldefault('r', c.relowner))) a WHERE c.oid = %L::pg_catalog.regclass LOOP EXECUTE pg_catalog.format('REVOKE ALL ON TABLE %%s FROM %%s', %L, CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(x.grantee)) END); END LOOP; %s END $acl$$f$,
            o.name,
            CASE WHEN strip AND EXISTS (SELECT 1 FROM pg_catalog.aclexplode(COALESCE(o.relacl, pg_catalog.acldefault('r', o.relowner))) a
                    WHERE a.grantee <> o.relowner AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'))
                THEN '{}' ELSE o.relacl::text END,
            o.name, o.name, grants);
        FOR x IN SELECT att.attname, a.privilege_type, a.is_grantable,
                CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END AS grantee
            FROM pg_catalog.pg_attribute att, pg_catalog.aclexplode(att.attacl) a
            WHERE att.attrelid = o.oid AND att.attnum > 0 AND NOT att.attisdropped AND att.attacl IS NOT NULL
              AND NOT (strip AND a.grantee <> o.relowner AND a.privilege_type IN ('INSERT', 'UPDATE'))
            ORDER BY att.attnum
        LOOP
            ddl := ddl || pg_catalog.format('GRANT %s (%I) ON TABLE %s TO %s%s', x.privilege_type, x.attname, o.name, x.grantee,
                CASE WHEN x.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
        IF o.oid <> rel AND pg_catalog.obj_description(o.oid, 'pg_class') IS NOT NULL THEN
            ddl := ddl || pg_catalog.format('COMMENT ON %s %s IS %L', kind, o.name, pg_catalog.obj_description(o.oid, 'pg_class'));
        END IF;
        FOR x IN SELECT att.attname, pg_catalog.col_description(o.oid, att.attnum) AS d FROM pg_catalog.pg_attribute att
            WHERE att.attrelid = o.oid AND att.attnum > 0 AND NOT att.attisdropped
              AND pg_catalog.col_description(o.oid, att.attnum) IS NOT NULL ORDER BY att.attnum
        LOOP
            ddl := ddl || pg_catalog.format('COMMENT ON COLUMN %s.%I IS %L', o.name, x.attname, x.d);
        END LOOP;
        FOR x IN SELECT pg_catalog.pg_get_indexdef(i.indexrelid) AS d, i.indexrelid::pg_catalog.regclass::text AS ix,
                pg_catalog.obj_description(i.indexrelid, 'pg_class') AS c
            FROM pg_catalog.pg_index i WHERE i.indrelid = o.oid ORDER BY i.indexrelid
        LOOP
            -- The converted relation's indexes are made again by the conversion itself.
            IF o.oid <> rel THEN
                ddl := ddl || x.d;
            END IF;
            IF x.c IS NOT NULL THEN
                ddl := ddl || pg_catalog.format('COMMENT ON INDEX %s IS %L', x.ix, x.c);
            END IF;
        END LOOP;
        CONTINUE WHEN o.oid = rel;
        FOR x IN SELECT pg_catalog.pg_get_statisticsobjdef(s.oid) AS d FROM pg_catalog.pg_statistic_ext s
            WHERE s.stxrelid = o.oid ORDER BY s.oid
        LOOP
            ddl := ddl || x.d;
        END LOOP;
        -- Triggers and rules once every view exists: a rule may read a view kept
        -- after this one.
        FOR x IN SELECT pg_catalog.pg_get_triggerdef(t.oid) AS d FROM pg_catalog.pg_trigger t
            WHERE t.tgrelid = o.oid AND NOT t.tgisinternal ORDER BY t.tgname
        LOOP
            later := later || x.d;
        END LOOP;
        FOR x IN SELECT pg_catalog.pg_get_ruledef(r.oid) AS d, r.rulename FROM pg_catalog.pg_rewrite r
            WHERE r.ev_class = o.oid AND r.rulename <> '_RETURN' ORDER BY r.rulename
        LOOP
            later := later || x.d;
            -- Dropped before any view: it may read one dropped before its own.
            rules := rules || pg_catalog.format('DROP RULE %I ON %s', x.rulename, o.name);
        END LOOP;
        FOR x IN SELECT att.attname, pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) AS e FROM pg_catalog.pg_attrdef ad
            JOIN pg_catalog.pg_attribute att ON att.attrelid = ad.adrelid AND att.attnum = ad.adnum
            WHERE ad.adrelid = o.oid ORDER BY att.attnum
        LOOP
            ddl := ddl || pg_catalog.format('ALTER %s %s ALTER COLUMN %I SET DEFAULT %s', kind, o.name, x.attname, x.e);
        END LOOP;
        drops := pg_catalog.format('DROP %s %s', kind, o.name) || drops;
    END LOOP;
    FOR x IN SELECT pg_catalog.unnest(rules || drops) AS s LOOP
        EXECUTE x.s;
    END LOOP;
    PERFORM pg_catalog.set_config({carrier}, pg_catalog.array_to_json(ddl || later)::text, true);
    PERFORM pg_catalog.set_config('search_path', path, true);
END;
"#;

/// The body of [`restore_sql`]'s `DO` block; `{carrier}` is filled in.
const RESTORE: &str = r#"DECLARE
    saved text := pg_catalog.current_setting({carrier}, true);
    path text := pg_catalog.current_setting('search_path');
    x record;
BEGIN
    IF saved IS NULL OR saved = '' THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    FOR x IN SELECT s.value AS d FROM pg_catalog.json_array_elements_text(saved::pg_catalog.json) WITH ORDINALITY AS s(value, n) ORDER BY s.n LOOP
        EXECUTE x.d;
    END LOOP;
    PERFORM pg_catalog.set_config({carrier}, '', true);
    PERFORM pg_catalog.set_config('search_path', path, true);
END;
"#;
