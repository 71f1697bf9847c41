-- =====================================================
-- refreshd: Inventory Valuation — rollback
-- =====================================================
-- Purpose : Removes the refresh layer of 002, 003 and 004.
-- Drops   : the keyed variant of 004: the 8 inventory_keys_on_* triggers,
--           core.inventory_keys_from_warehouses(),
--           core.inventory_keys_from_stock_on_hand(),
--           core.inventory_keys_all(), table core.inventory_valuation_live
--           (derived data only; install refills it), view
--           core.inventory_valuation_def;
--           the 5 refresh_inv_views_on_* triggers,
--           core.trigger_refresh_inventory_views(),
--           core.refresh_all_inventory_views(),
--           core.mv_low_stock_alerts, core.mv_inventory_valuation,
--           core.mv_product_stock_summary (with their indexes).
-- KEEPS   : everything of 001: schema core, its six tables (warehouses,
--           suppliers, brand, products, stock_on_hand, stock_movement) and
--           ALL their data, the enum types, the cost-update and brand
--           timestamp triggers.
-- Run     : psql "$DATABASE_URL" -f sql/inventory/rollback.sql
--           Idempotent: every DROP is IF EXISTS.
--
-- Deliberately narrower than the seed's 003_..._ROLLBACK.sql, which backs
-- core.brand and core.stock_movement up into schema `backup` and drops
-- them with the new columns. Here 001 plays the part of the application's
-- own schema (the attendance area's 001 likewise), and a rollback of the
-- refresh machinery must not destroy stock history or cost data. To remove
-- the inventory schema entirely, after a backup:
--     DROP SCHEMA core CASCADE;
-- No CASCADE below: anything a user built on these views stops the
-- rollback with the dependency named, instead of vanishing silently.
-- =====================================================

\set ON_ERROR_STOP on

BEGIN;

\echo 'Rolling back inventory view refresh objects...'

-- Keyed variant (004) first: triggers, then what they call, then the
-- table and its definition.
DROP TRIGGER IF EXISTS inventory_keys_on_warehouses_insert      ON core.warehouses;
DROP TRIGGER IF EXISTS inventory_keys_on_warehouses_update      ON core.warehouses;
DROP TRIGGER IF EXISTS inventory_keys_on_warehouses_delete      ON core.warehouses;
DROP TRIGGER IF EXISTS inventory_keys_on_warehouses_truncate    ON core.warehouses;
DROP TRIGGER IF EXISTS inventory_keys_on_stock_on_hand_insert   ON core.stock_on_hand;
DROP TRIGGER IF EXISTS inventory_keys_on_stock_on_hand_update   ON core.stock_on_hand;
DROP TRIGGER IF EXISTS inventory_keys_on_stock_on_hand_delete   ON core.stock_on_hand;
DROP TRIGGER IF EXISTS inventory_keys_on_stock_on_hand_truncate ON core.stock_on_hand;
DROP FUNCTION IF EXISTS core.inventory_keys_from_warehouses();
DROP FUNCTION IF EXISTS core.inventory_keys_from_stock_on_hand();
DROP FUNCTION IF EXISTS core.inventory_keys_all();
DROP TABLE IF EXISTS core.inventory_valuation_live;
DROP VIEW IF EXISTS core.inventory_valuation_def;

-- Triggers first: from here on writers no longer notify.
DROP TRIGGER IF EXISTS refresh_inv_views_on_products      ON core.products;
DROP TRIGGER IF EXISTS refresh_inv_views_on_brand         ON core.brand;
DROP TRIGGER IF EXISTS refresh_inv_views_on_suppliers     ON core.suppliers;
DROP TRIGGER IF EXISTS refresh_inv_views_on_warehouses    ON core.warehouses;
DROP TRIGGER IF EXISTS refresh_inv_views_on_stock_on_hand ON core.stock_on_hand;

DROP FUNCTION IF EXISTS core.trigger_refresh_inventory_views();
DROP FUNCTION IF EXISTS core.refresh_all_inventory_views();

-- Dependent view before the view it reads.
DROP MATERIALIZED VIEW IF EXISTS core.mv_low_stock_alerts;
DROP MATERIALIZED VIEW IF EXISTS core.mv_inventory_valuation;
DROP MATERIALIZED VIEW IF EXISTS core.mv_product_stock_summary;

COMMIT;

\echo 'Rollback complete. Inventory views, notify triggers and the keyed variant removed; schema core, its tables and data kept.'
