-- =====================================================
-- refreshd: Inventory Valuation — 002 materialized views
-- =====================================================
-- Purpose : The seed's three pre-computed inventory views and their
--           refresh function.
-- Creates : core.mv_product_stock_summary  one row per product
--             unique idx_mv_product_stock_summary_pk (product_id)
--           core.mv_inventory_valuation    one row per warehouse
--             unique idx_mv_inventory_valuation_pk (warehouse_id)
--           core.mv_low_stock_alerts       one row per product below its
--             reorder level; READS core.mv_product_stock_summary
--             unique idx_mv_low_stock_alerts_pk (product_id)
--           core.refresh_all_inventory_views()
-- Run     : through sql/inventory/install.sql (one transaction).
--
-- Inputs (the tables 003_triggers.sql puts notify triggers on):
--   mv_product_stock_summary: core.products, core.brand, core.suppliers,
--                             core.stock_on_hand
--   mv_inventory_valuation:   core.warehouses, core.stock_on_hand
--   mv_low_stock_alerts:      core.mv_product_stock_summary only, i.e.
--                             transitively the summary's inputs
-- core.stock_movement is not read: its effect reaches the views through
-- stock_on_hand, which the cost trigger maintains.
--
-- mv_low_stock_alerts is a view built on a view on purpose: it must be
-- refreshed after mv_product_stock_summary, never before or at the same
-- time, or it reflects the summary's previous state. refreshd orders
-- refreshes by this dependency; refresh_all_inventory_views() does too.
--
-- No now() column in these views: REFRESH CONCURRENTLY then rewrites only
-- the rows whose values changed.
-- CREATE ... IF NOT EXISTS keeps existing views as they are: to change a
-- definition run rollback.sql, then install.sql.
-- =====================================================

CREATE MATERIALIZED VIEW IF NOT EXISTS core.mv_product_stock_summary AS
SELECT p.id                                                AS product_id,
       p.sku,
       p.name                                              AS product_name,
       p.brand_id,
       b.name                                              AS brand_name,
       p.supplier_id,
       s.name                                              AS supplier_name,
       p.is_active,
       p.reorder_level,
       count(soh.id) FILTER (WHERE soh.quantity > 0)       AS warehouses_in_stock,
       coalesce(sum(soh.quantity), 0)::numeric(16,3)       AS total_quantity,
       coalesce(sum(soh.total_value) FILTER (WHERE soh.quantity > 0), 0)::numeric(22,4)
                                                           AS total_value,
       -- Weighted by quantity, over the warehouses that hold stock at a cost.
       round(sum(soh.total_value) FILTER (WHERE soh.quantity > 0)
             / nullif(sum(soh.quantity) FILTER (WHERE soh.quantity > 0
                                                AND soh.cost_price IS NOT NULL), 0), 4)
                                                           AS avg_cost_price,
       max(soh.last_cost_update_at)                        AS last_cost_update_at
FROM core.products p
LEFT JOIN core.brand b          ON b.id = p.brand_id
LEFT JOIN core.suppliers s      ON s.id = p.supplier_id
LEFT JOIN core.stock_on_hand soh ON soh.product_id = p.id
GROUP BY p.id, b.id, s.id
WITH DATA;

COMMENT ON MATERIALIZED VIEW core.mv_product_stock_summary IS
    'Stock and value per product over all warehouses. Input of core.mv_low_stock_alerts; refresh it first.';

CREATE UNIQUE INDEX IF NOT EXISTS idx_mv_product_stock_summary_pk
    ON core.mv_product_stock_summary (product_id);
CREATE INDEX IF NOT EXISTS idx_mv_product_stock_summary_supplier
    ON core.mv_product_stock_summary (supplier_id);
CREATE INDEX IF NOT EXISTS idx_mv_product_stock_summary_brand
    ON core.mv_product_stock_summary (brand_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS core.mv_inventory_valuation AS
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
GROUP BY w.id
WITH DATA;

COMMENT ON MATERIALIZED VIEW core.mv_inventory_valuation IS
    'Stock value per warehouse (positive stock only).';

CREATE UNIQUE INDEX IF NOT EXISTS idx_mv_inventory_valuation_pk
    ON core.mv_inventory_valuation (warehouse_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS core.mv_low_stock_alerts AS
SELECT pss.product_id,
       pss.sku,
       pss.product_name,
       pss.brand_name,
       pss.supplier_id,
       pss.supplier_name,
       pss.total_quantity,
       pss.reorder_level,
       (pss.reorder_level - pss.total_quantity)::numeric(16,3)  AS shortfall,
       CASE WHEN pss.total_quantity <= 0                      THEN 'OUT_OF_STOCK'
            WHEN pss.total_quantity <= pss.reorder_level / 2  THEN 'CRITICAL'
            ELSE 'LOW'
       END                                                     AS severity
FROM core.mv_product_stock_summary pss
WHERE pss.is_active
  AND pss.reorder_level > 0
  AND pss.total_quantity <= pss.reorder_level
WITH DATA;

COMMENT ON MATERIALIZED VIEW core.mv_low_stock_alerts IS
    'Active products at or below their reorder level. Reads core.mv_product_stock_summary: refresh after it.';

CREATE UNIQUE INDEX IF NOT EXISTS idx_mv_low_stock_alerts_pk
    ON core.mv_low_stock_alerts (product_id);
CREATE INDEX IF NOT EXISTS idx_mv_low_stock_alerts_severity
    ON core.mv_low_stock_alerts (severity);

-- Refreshes the three views in dependency order (summary before alerts),
-- CONCURRENTLY so readers are never blocked. A view that was never
-- populated gets a plain REFRESH, since CONCURRENTLY refuses it.
-- Not SECURITY DEFINER: REFRESH requires ownership, and callers should get
-- "must be owner" rather than borrow the owner's rights.
CREATE OR REPLACE FUNCTION core.refresh_all_inventory_views()
RETURNS void
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
    v_view text;
BEGIN
    FOREACH v_view IN ARRAY ARRAY[
        'core.mv_product_stock_summary',   -- input of mv_low_stock_alerts
        'core.mv_inventory_valuation',
        'core.mv_low_stock_alerts'         -- last: reads mv_product_stock_summary
    ]
    LOOP
        IF (SELECT c.relispopulated FROM pg_catalog.pg_class c
            WHERE c.oid = v_view::regclass) THEN
            EXECUTE 'REFRESH MATERIALIZED VIEW CONCURRENTLY ' || v_view;
        ELSE
            EXECUTE 'REFRESH MATERIALIZED VIEW ' || v_view;
        END IF;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION core.refresh_all_inventory_views() IS
    'REFRESH CONCURRENTLY the three core inventory views in dependency order.';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        GRANT USAGE ON SCHEMA core TO authenticated;
        GRANT SELECT ON core.mv_product_stock_summary,
                        core.mv_inventory_valuation,
                        core.mv_low_stock_alerts TO authenticated;
    END IF;
END;
$$;
