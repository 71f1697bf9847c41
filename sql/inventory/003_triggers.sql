-- =====================================================
-- refreshd: Inventory Valuation — 003 notify triggers
-- =====================================================
-- Purpose : Tell refreshd (LISTEN refresh_inventory_views) that the core
--           inventory views may be stale.
-- Creates : function core.trigger_refresh_inventory_views()
--           one trigger per base table the three views read, all
--           AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE FOR EACH STATEMENT:
--             refresh_inv_views_on_products       ON core.products
--             refresh_inv_views_on_brand          ON core.brand
--             refresh_inv_views_on_suppliers      ON core.suppliers
--             refresh_inv_views_on_warehouses     ON core.warehouses
--             refresh_inv_views_on_stock_on_hand  ON core.stock_on_hand
-- Run     : through sql/inventory/install.sql (one transaction).
--
-- One channel for all three views: refreshd marks every view listening on
-- it dirty and refreshes mv_low_stock_alerts after mv_product_stock_summary.
-- The derived view itself needs no trigger: a successful refresh of its
-- input marks it dirty in refreshd.
-- Statement level + constant payload: a bulk load fires once per
-- statement, and PostgreSQL folds identical notifications of one
-- transaction into one. UPDATE has no column list: the views read most
-- columns of these small tables, and a missed change is worse than a
-- spare refresh. validate.sql checks that every table the views read
-- (found through pg_depend) carries such a trigger.
-- =====================================================

CREATE OR REPLACE FUNCTION core.trigger_refresh_inventory_views()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- Constant payload on purpose (folding); refreshd ignores payloads.
    PERFORM pg_catalog.pg_notify('refresh_inventory_views', '');
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION core.trigger_refresh_inventory_views() IS
    'Statement-level trigger: NOTIFY refresh_inventory_views with an empty (constant) payload.';

-- DROP + CREATE also corrects a same-named row-level trigger from an
-- older migration; inside install.sql's transaction no write slips between.
DROP TRIGGER IF EXISTS refresh_inv_views_on_products ON core.products;
CREATE TRIGGER refresh_inv_views_on_products
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON core.products
    FOR EACH STATEMENT
    EXECUTE FUNCTION core.trigger_refresh_inventory_views();

DROP TRIGGER IF EXISTS refresh_inv_views_on_brand ON core.brand;
CREATE TRIGGER refresh_inv_views_on_brand
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON core.brand
    FOR EACH STATEMENT
    EXECUTE FUNCTION core.trigger_refresh_inventory_views();

DROP TRIGGER IF EXISTS refresh_inv_views_on_suppliers ON core.suppliers;
CREATE TRIGGER refresh_inv_views_on_suppliers
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON core.suppliers
    FOR EACH STATEMENT
    EXECUTE FUNCTION core.trigger_refresh_inventory_views();

DROP TRIGGER IF EXISTS refresh_inv_views_on_warehouses ON core.warehouses;
CREATE TRIGGER refresh_inv_views_on_warehouses
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON core.warehouses
    FOR EACH STATEMENT
    EXECUTE FUNCTION core.trigger_refresh_inventory_views();

-- Also fires for the writes core.stock_movement_update_cost() makes, so
-- stock movements are covered without a trigger of their own.
DROP TRIGGER IF EXISTS refresh_inv_views_on_stock_on_hand ON core.stock_on_hand;
CREATE TRIGGER refresh_inv_views_on_stock_on_hand
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON core.stock_on_hand
    FOR EACH STATEMENT
    EXECUTE FUNCTION core.trigger_refresh_inventory_views();
