-- =====================================================
-- refreshd: Inventory Valuation — 004 keyed variant
-- =====================================================
-- Purpose : core.mv_inventory_valuation as a plain table that refreshd
--           keeps equal to its definition one warehouse at a time ("Keyed
--           refresh" in refreshd's SPEC), next to the materialized view,
--           which stays as it is.
-- Creates : view  core.inventory_valuation_def   the definition: exactly the
--             query of core.mv_inventory_valuation (same columns, types
--             and order)
--           table core.inventory_valuation_live  what readers read
--             primary key inventory_valuation_live_pkey (warehouse_id)
--           trigger functions core.inventory_keys_from_warehouses(),
--             core.inventory_keys_from_stock_on_hand(),
--             core.inventory_keys_all()
--           8 triggers, AFTER ... FOR EACH STATEMENT, one event each:
--             inventory_keys_on_warehouses_{insert,update,delete,truncate}
--               ON core.warehouses
--             inventory_keys_on_stock_on_hand_{insert,update,delete,truncate}
--               ON core.stock_on_hand
-- Run     : through sql/inventory/install.sql (one transaction), after 003.
--
-- refreshd config for it:
--   [[view]]
--   name     = "core.inventory_valuation_live"
--   kind     = "keyed"
--   query    = "core.inventory_valuation_def"
--   key      = ["warehouse_id"]
--   channels = ["inventory_keys"]
--
-- Why it fits: the key is unique (the view groups by core.warehouses.id:
-- one row per warehouse, also without stock, never NULL) and every row it
-- reads carries the key itself (warehouses.id, stock_on_hand.warehouse_id),
-- so the triggers name the dirty groups without a lookup. The other two
-- views are left to REFRESH: mv_product_stock_summary's brand and supplier
-- rows carry no product key (a brand rename dirties all its products), and
-- mv_low_stock_alerts reads another view.
--
-- NOTIFICATIONS on channel inventory_keys:
--   [["<warehouse_id>"],...]  the distinct warehouses a statement changed:
--        a JSON array of one-element key tuples, uuids as JSON strings,
--        sorted, no whitespace.
--   *    every warehouse: on TRUNCATE of either table, and when the list
--        would not fit in one notification (payloads must be shorter than
--        8,000 bytes; one key takes 41 bytes, so at most 195 keys fit).
--   Nothing is sent when a statement changed no group (no rows, or only
--   columns the definition does not read: updated_at, product_id...).
--
-- WHICH KEYS: the old and the new rows of each statement (transition
--   tables), so a row that moves between warehouses dirties both. UPDATE
--   compares old and new rows on the columns the definition reads
--   (warehouses: id, code, name, is_active; stock_on_hand: id,
--   warehouse_id, quantity, cost_price, total_value, last_cost_update_at);
--   PostgreSQL allows no UPDATE column list with transition tables.
--   Stock movements reach stock_on_hand through
--   core.stock_movement_update_cost(), whose INSERT ... ON CONFLICT DO
--   UPDATE fires these triggers once per movement; identical payloads of
--   one transaction are delivered once. Deleting a warehouse cascades to
--   its stock_on_hand rows; both triggers name the warehouse.
--
-- Writes that fire no triggers (session_replication_role = replica, as
-- refreshd_demo's fast loader uses) must NOTIFY inventory_keys, '*'.
--
-- The live table is (re)filled from the definition whenever this file runs
-- (see sql/attendance/005_keyed_statistics.sql for why that is safe).
-- The definition has no now() column, so the live table and the view can
-- be compared as they are:
--   (TABLE core.inventory_valuation_live EXCEPT ALL TABLE core.inventory_valuation_def)
--   UNION ALL
--   (TABLE core.inventory_valuation_def EXCEPT ALL TABLE core.inventory_valuation_live)
--
-- Idempotent: CREATE OR REPLACE / IF NOT EXISTS / DROP TRIGGER IF EXISTS.
-- Plain SQL only, no psql meta-commands.
-- =====================================================

-- The definition. Keep it identical to 002's core.mv_inventory_valuation
-- (validate.sql compares the two).
CREATE OR REPLACE VIEW core.inventory_valuation_def AS
SELECT w.id                                                        AS warehouse_id,
       w.code                                                      AS warehouse_code,
       w.name                                                      AS warehouse_name,
       w.is_active,
       count(soh.id) FILTER (WHERE soh.quantity > 0)               AS products_in_stock,
       coalesce(sum(soh.quantity) FILTER (WHERE soh.quantity > 0), 0)::numeric(16,3)
                                                                   AS total_quantity,
       coalesce(sum(soh.total_value) FILTER (WHERE soh.quantity > 0), 0)::numeric(22,4)
                                                                   AS total_value,
       -- Stock that cannot be valued yet: a data-quality signal.
       count(soh.id) FILTER (WHERE soh.quantity > 0 AND soh.cost_price IS NULL)
                                                                   AS uncosted_items,
       max(soh.last_cost_update_at)                                AS last_cost_update_at
FROM core.warehouses w
LEFT JOIN core.stock_on_hand soh ON soh.warehouse_id = w.id
GROUP BY w.id;

COMMENT ON VIEW core.inventory_valuation_def IS
    'Definition of core.inventory_valuation_live (the query of core.mv_inventory_valuation); refreshd recomputes the live table from it per warehouse_id.';

CREATE TABLE IF NOT EXISTS core.inventory_valuation_live (
    warehouse_id        uuid          NOT NULL,
    warehouse_code      text,
    warehouse_name      text,
    is_active           boolean,
    products_in_stock   bigint,
    total_quantity      numeric(16,3),
    total_value         numeric(22,4),
    uncosted_items      bigint,
    last_cost_update_at timestamptz,
    CONSTRAINT inventory_valuation_live_pkey PRIMARY KEY (warehouse_id)
);

COMMENT ON TABLE core.inventory_valuation_live IS
    'Stock value per warehouse, kept equal to core.inventory_valuation_def by refreshd (kind = "keyed"), fed by channel inventory_keys.';

-- The trigger functions: per statement one query that finds the changed
-- warehouses and builds the payload (sorted, distinct, non-NULL keys as
-- compact JSON; NULL when there is none); '*' replaces a payload over
-- 7,999 bytes. As in attendance/005: no helper function, no second query.
CREATE OR REPLACE FUNCTION core.inventory_keys_from_warehouses()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_payload text;
BEGIN
    -- Transition tables: new_rows (INSERT, UPDATE), old_rows (UPDATE, DELETE).
    IF TG_OP = 'INSERT' THEN
        SELECT '[' || string_agg('[' || to_json(k.warehouse_id)::text || ']', ',' ORDER BY k.warehouse_id) || ']'
          INTO v_payload
        FROM (SELECT DISTINCT n.id AS warehouse_id FROM new_rows n) AS k;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT '[' || string_agg('[' || to_json(k.warehouse_id)::text || ']', ',' ORDER BY k.warehouse_id) || ']'
          INTO v_payload
        FROM (SELECT DISTINCT o.id AS warehouse_id FROM old_rows o) AS k;
    ELSE
        -- Only rows whose columns read by the definition changed, old and new.
        SELECT '[' || string_agg('[' || to_json(k.warehouse_id)::text || ']', ',' ORDER BY k.warehouse_id) || ']'
          INTO v_payload
        FROM (SELECT DISTINCT d.id AS warehouse_id
              FROM ((SELECT o.id, o.code, o.name, o.is_active FROM old_rows o
                     EXCEPT ALL
                     SELECT n.id, n.code, n.name, n.is_active FROM new_rows n)
                    UNION ALL
                    (SELECT n.id, n.code, n.name, n.is_active FROM new_rows n
                     EXCEPT ALL
                     SELECT o.id, o.code, o.name, o.is_active FROM old_rows o)) AS d) AS k;
    END IF;

    IF octet_length(v_payload) > 7999 THEN
        v_payload := '*';
    END IF;
    IF v_payload IS NOT NULL THEN
        PERFORM pg_catalog.pg_notify('inventory_keys', v_payload);
    END IF;
    RETURN NULL;  -- AFTER ... FOR EACH STATEMENT: return value is ignored
END;
$$;

COMMENT ON FUNCTION core.inventory_keys_from_warehouses() IS
    'Statement-level trigger with transition tables: NOTIFY inventory_keys with the ids of the changed warehouses.';

CREATE OR REPLACE FUNCTION core.inventory_keys_from_stock_on_hand()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_payload text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT '[' || string_agg('[' || to_json(k.warehouse_id)::text || ']', ',' ORDER BY k.warehouse_id) || ']'
          INTO v_payload
        FROM (SELECT DISTINCT n.warehouse_id FROM new_rows n
              WHERE n.warehouse_id IS NOT NULL) AS k;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT '[' || string_agg('[' || to_json(k.warehouse_id)::text || ']', ',' ORDER BY k.warehouse_id) || ']'
          INTO v_payload
        FROM (SELECT DISTINCT o.warehouse_id FROM old_rows o
              WHERE o.warehouse_id IS NOT NULL) AS k;
    ELSE
        SELECT '[' || string_agg('[' || to_json(k.warehouse_id)::text || ']', ',' ORDER BY k.warehouse_id) || ']'
          INTO v_payload
        FROM (SELECT DISTINCT d.warehouse_id
              FROM ((SELECT o.id, o.warehouse_id, o.quantity, o.cost_price, o.total_value, o.last_cost_update_at
                     FROM old_rows o
                     EXCEPT ALL
                     SELECT n.id, n.warehouse_id, n.quantity, n.cost_price, n.total_value, n.last_cost_update_at
                     FROM new_rows n)
                    UNION ALL
                    (SELECT n.id, n.warehouse_id, n.quantity, n.cost_price, n.total_value, n.last_cost_update_at
                     FROM new_rows n
                     EXCEPT ALL
                     SELECT o.id, o.warehouse_id, o.quantity, o.cost_price, o.total_value, o.last_cost_update_at
                     FROM old_rows o)) AS d
              WHERE d.warehouse_id IS NOT NULL) AS k;
    END IF;

    IF octet_length(v_payload) > 7999 THEN
        v_payload := '*';
    END IF;
    IF v_payload IS NOT NULL THEN
        PERFORM pg_catalog.pg_notify('inventory_keys', v_payload);
    END IF;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION core.inventory_keys_from_stock_on_hand() IS
    'Statement-level trigger with transition tables: NOTIFY inventory_keys with the old and new warehouse_id of the changed stock_on_hand rows.';

CREATE OR REPLACE FUNCTION core.inventory_keys_all()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('inventory_keys', '*');
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION core.inventory_keys_all() IS
    'Statement-level TRUNCATE trigger: NOTIFY inventory_keys, ''*'' (every warehouse).';

-- One trigger per event (transition tables allow no more); names avoid
-- "inv_views", which names 003's notify triggers only.
DROP TRIGGER IF EXISTS inventory_keys_on_warehouses_insert ON core.warehouses;
CREATE TRIGGER inventory_keys_on_warehouses_insert
    AFTER INSERT ON core.warehouses
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION core.inventory_keys_from_warehouses();

DROP TRIGGER IF EXISTS inventory_keys_on_warehouses_update ON core.warehouses;
CREATE TRIGGER inventory_keys_on_warehouses_update
    AFTER UPDATE ON core.warehouses
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION core.inventory_keys_from_warehouses();

DROP TRIGGER IF EXISTS inventory_keys_on_warehouses_delete ON core.warehouses;
CREATE TRIGGER inventory_keys_on_warehouses_delete
    AFTER DELETE ON core.warehouses
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION core.inventory_keys_from_warehouses();

DROP TRIGGER IF EXISTS inventory_keys_on_warehouses_truncate ON core.warehouses;
CREATE TRIGGER inventory_keys_on_warehouses_truncate
    AFTER TRUNCATE ON core.warehouses
    FOR EACH STATEMENT
    EXECUTE FUNCTION core.inventory_keys_all();

DROP TRIGGER IF EXISTS inventory_keys_on_stock_on_hand_insert ON core.stock_on_hand;
CREATE TRIGGER inventory_keys_on_stock_on_hand_insert
    AFTER INSERT ON core.stock_on_hand
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION core.inventory_keys_from_stock_on_hand();

DROP TRIGGER IF EXISTS inventory_keys_on_stock_on_hand_update ON core.stock_on_hand;
CREATE TRIGGER inventory_keys_on_stock_on_hand_update
    AFTER UPDATE ON core.stock_on_hand
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION core.inventory_keys_from_stock_on_hand();

DROP TRIGGER IF EXISTS inventory_keys_on_stock_on_hand_delete ON core.stock_on_hand;
CREATE TRIGGER inventory_keys_on_stock_on_hand_delete
    AFTER DELETE ON core.stock_on_hand
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION core.inventory_keys_from_stock_on_hand();

DROP TRIGGER IF EXISTS inventory_keys_on_stock_on_hand_truncate ON core.stock_on_hand;
CREATE TRIGGER inventory_keys_on_stock_on_hand_truncate
    AFTER TRUNCATE ON core.stock_on_hand
    FOR EACH STATEMENT
    EXECUTE FUNCTION core.inventory_keys_all();

-- Fill the table: a full recompute (see 005 of the attendance area for the lock).
LOCK TABLE core.inventory_valuation_live IN SHARE ROW EXCLUSIVE MODE;
DELETE FROM core.inventory_valuation_live;
INSERT INTO core.inventory_valuation_live
SELECT * FROM core.inventory_valuation_def;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        GRANT SELECT ON core.inventory_valuation_live TO authenticated;
    END IF;
END;
$$;
