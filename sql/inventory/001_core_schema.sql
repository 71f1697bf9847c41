-- =====================================================
-- refreshd: Inventory Valuation — 001 core schema
-- =====================================================
-- Purpose : The schema `core` the inventory seed (migration 003) works on:
--           the tables it assumes (warehouses, suppliers, products,
--           stock_on_hand) and the ones it adds (brand, stock_movement,
--           cost columns, supplier contact columns), its 3 enum types and
--           its 2 triggers (cost update, brand timestamp).
-- Creates : schema core
--           types core.movement_type, core.reference_type, core.cost_method
--           tables core.warehouses, core.suppliers, core.brand,
--             core.products, core.stock_on_hand, core.stock_movement
--           function core.stock_movement_update_cost() + trigger
--             stock_movement_update_cost ON core.stock_movement
--           function core.brand_update_timestamp() + trigger
--             brand_update_timestamp ON core.brand
-- Run     : through sql/inventory/install.sql (one transaction).
--
-- Keys are uuid (gen_random_uuid(), core since PostgreSQL 13) throughout,
-- as in the attendance area. Idempotent: enum types are created only if
-- pg_type lacks them; tables are CREATE IF NOT EXISTS, and the seed's new
-- columns are added to pre-existing tables when missing, so the file also
-- upgrades an older core schema the way the seed's migration does.
-- Plain SQL only, no psql meta-commands.
-- =====================================================

CREATE SCHEMA IF NOT EXISTS core;

-- CREATE TYPE has no IF NOT EXISTS; check pg_type instead of dropping, so
-- re-running never touches columns that already use the types.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type t
                   JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
                   WHERE n.nspname = 'core' AND t.typname = 'movement_type') THEN
        CREATE TYPE core.movement_type AS ENUM
            ('RECEIPT', 'ISSUE', 'TRANSFER_IN', 'TRANSFER_OUT', 'ADJUSTMENT', 'RETURN');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type t
                   JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
                   WHERE n.nspname = 'core' AND t.typname = 'reference_type') THEN
        CREATE TYPE core.reference_type AS ENUM
            ('PURCHASE_ORDER', 'SALES_ORDER', 'TRANSFER', 'ADJUSTMENT', 'RETURN', 'MANUAL');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type t
                   JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
                   WHERE n.nspname = 'core' AND t.typname = 'cost_method') THEN
        -- Only the methods the cost trigger implements.
        CREATE TYPE core.cost_method AS ENUM ('WEIGHTED_AVERAGE', 'STANDARD');
    END IF;
END;
$$;

CREATE TABLE IF NOT EXISTS core.warehouses (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    code        text        NOT NULL,
    name        text        NOT NULL,
    is_active   boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT warehouses_code_key UNIQUE (code)
);

CREATE TABLE IF NOT EXISTS core.suppliers (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name          text        NOT NULL,
    contact_phone text,
    contact_email text,
    website       text,
    payment_terms text,
    is_active     boolean     NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS core.brand (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text        NOT NULL,
    description text,
    is_active   boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT brand_name_key UNIQUE (name)
);

CREATE TABLE IF NOT EXISTS core.products (
    id              uuid          PRIMARY KEY DEFAULT gen_random_uuid(),
    sku             text          NOT NULL,
    name            text          NOT NULL,
    -- SET NULL: retiring a brand or supplier must not delete products.
    brand_id        uuid          REFERENCES core.brand (id) ON DELETE SET NULL,
    supplier_id     uuid          REFERENCES core.suppliers (id) ON DELETE SET NULL,
    unit_of_measure text          NOT NULL DEFAULT 'EA',
    reorder_level   numeric(14,3) NOT NULL DEFAULT 0,
    is_active       boolean       NOT NULL DEFAULT true,
    created_at      timestamptz   NOT NULL DEFAULT now(),
    updated_at      timestamptz   NOT NULL DEFAULT now(),
    CONSTRAINT products_sku_key UNIQUE (sku),
    CONSTRAINT products_reorder_level_check CHECK (reorder_level >= 0)
);
CREATE TABLE IF NOT EXISTS core.stock_on_hand (
    id                  uuid             PRIMARY KEY DEFAULT gen_random_uuid(),
    -- CASCADE: stock_on_hand is derived state of a product in a warehouse.
    product_id          uuid             NOT NULL REFERENCES core.products (id) ON DELETE CASCADE,
    warehouse_id        uuid             NOT NULL REFERENCES core.warehouses (id) ON DELETE CASCADE,
    -- May go negative (issued before the receipt was booked); the views
    -- and the alerts treat <= 0 as out of stock.
    quantity            numeric(14,3)    NOT NULL DEFAULT 0,
    cost_price          numeric(14,4),
    cost_method         core.cost_method NOT NULL DEFAULT 'WEIGHTED_AVERAGE',
    last_cost_update_at timestamptz,
    total_value         numeric(20,4)    GENERATED ALWAYS AS (quantity * cost_price) STORED,
    updated_at          timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT stock_on_hand_product_warehouse_key UNIQUE (product_id, warehouse_id),
    CONSTRAINT stock_on_hand_cost_price_check CHECK (cost_price IS NULL OR cost_price >= 0)
);
-- The seed's new columns, for a core schema whose tables pre-date it (the
-- CREATE TABLEs above were then skipped). ALTER TABLE takes an ACCESS
-- EXCLUSIVE lock even when IF NOT EXISTS makes it a no-op, so only run it
-- for columns that are really missing: a re-install on a live database
-- then does not block readers of these tables.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT * FROM (VALUES
            -- change 4: supplier contacts
            ('suppliers',     'contact_phone',       'text'),
            ('suppliers',     'contact_email',       'text'),
            ('suppliers',     'website',             'text'),
            ('suppliers',     'payment_terms',       'text'),
            -- change 2: brand table
            ('products',      'brand_id',            'uuid REFERENCES core.brand (id) ON DELETE SET NULL'),
            -- change 3: cost price tracking
            ('stock_on_hand', 'cost_price',          'numeric(14,4)'),
            ('stock_on_hand', 'cost_method',         'core.cost_method NOT NULL DEFAULT ''WEIGHTED_AVERAGE'''),
            ('stock_on_hand', 'last_cost_update_at', 'timestamptz'),
            ('stock_on_hand', 'total_value',         'numeric(20,4) GENERATED ALWAYS AS (quantity * cost_price) STORED')
        ) AS v(tbl, col, def)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                       WHERE attrelid = format('core.%I', r.tbl)::regclass
                         AND attname = r.col AND NOT attisdropped) THEN
            EXECUTE format('ALTER TABLE core.%I ADD COLUMN %I %s', r.tbl, r.col, r.def);
        END IF;
    END LOOP;
END;
$$;

-- Append-only audit trail. Corrections are new ADJUSTMENT rows, never
-- UPDATE/DELETE: the cost trigger below only reacts to INSERT.
CREATE TABLE IF NOT EXISTS core.stock_movement (
    id             uuid                PRIMARY KEY DEFAULT gen_random_uuid(),
    movement_type  core.movement_type  NOT NULL,
    reference_type core.reference_type,
    reference_id   text,
    -- RESTRICT: a product or warehouse with history cannot vanish silently.
    product_id     uuid                NOT NULL REFERENCES core.products (id) ON DELETE RESTRICT,
    warehouse_id   uuid                NOT NULL REFERENCES core.warehouses (id) ON DELETE RESTRICT,
    -- Positive amount; the type gives the direction, except ADJUSTMENT,
    -- which carries its own sign.
    quantity       numeric(14,3)       NOT NULL,
    cost_price     numeric(14,4),
    notes          text,
    created_at     timestamptz         NOT NULL DEFAULT now(),
    created_by     text,
    CONSTRAINT stock_movement_quantity_check
        CHECK (quantity <> 0 AND (movement_type = 'ADJUSTMENT' OR quantity > 0)),
    CONSTRAINT stock_movement_cost_price_check CHECK (cost_price IS NULL OR cost_price >= 0)
);

-- Indexes on foreign keys and the seed's lookups.
CREATE INDEX IF NOT EXISTS idx_products_brand_id    ON core.products (brand_id);
CREATE INDEX IF NOT EXISTS idx_products_supplier_id ON core.products (supplier_id);
-- Case-insensitive name search (prefix LIKE). A '%x%' search needs pg_trgm,
-- which is an extension and deliberately not required here.
CREATE INDEX IF NOT EXISTS idx_products_lower_name  ON core.products (lower(name) text_pattern_ops);
CREATE INDEX IF NOT EXISTS idx_stock_on_hand_warehouse_id ON core.stock_on_hand (warehouse_id);
CREATE INDEX IF NOT EXISTS idx_stock_movement_product_warehouse_created
    ON core.stock_movement (product_id, warehouse_id, created_at);
CREATE INDEX IF NOT EXISTS idx_stock_movement_warehouse_id ON core.stock_movement (warehouse_id);
CREATE INDEX IF NOT EXISTS idx_stock_movement_created_at   ON core.stock_movement (created_at);
CREATE INDEX IF NOT EXISTS idx_stock_movement_reference
    ON core.stock_movement (reference_type, reference_id);

-- Cost update automation: every movement is applied to stock_on_hand.
-- RECEIPT: quantity up, cost_price becomes the weighted average of the
--          stock on hand and the receipt (unless cost_method = STANDARD
--          and a cost is already set; a receipt into empty or negative
--          stock takes the receipt's cost).
-- others:  quantity only (ISSUE, TRANSFER_OUT down; TRANSFER_IN, RETURN up;
--          ADJUSTMENT by its signed quantity).
-- Row level on purpose: each movement needs its own arithmetic. The
-- resulting writes to stock_on_hand fire that table's statement-level
-- inv_views trigger once per movement, and the constant payload folds
-- those notifications into one per transaction.
CREATE OR REPLACE FUNCTION core.stock_movement_update_cost()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_delta numeric;
BEGIN
    v_delta := CASE NEW.movement_type
                   WHEN 'RECEIPT'      THEN  NEW.quantity
                   WHEN 'TRANSFER_IN'  THEN  NEW.quantity
                   WHEN 'RETURN'       THEN  NEW.quantity
                   WHEN 'ISSUE'        THEN -NEW.quantity
                   WHEN 'TRANSFER_OUT' THEN -NEW.quantity
                   WHEN 'ADJUSTMENT'   THEN  NEW.quantity
               END;

    IF NEW.movement_type = 'RECEIPT' AND NEW.cost_price IS NOT NULL THEN
        INSERT INTO core.stock_on_hand AS soh
               (product_id, warehouse_id, quantity, cost_price, last_cost_update_at)
        VALUES (NEW.product_id, NEW.warehouse_id, v_delta, NEW.cost_price, now())
        ON CONFLICT (product_id, warehouse_id) DO UPDATE
        SET cost_price = CASE
                WHEN soh.cost_method = 'STANDARD' AND soh.cost_price IS NOT NULL
                    THEN soh.cost_price
                WHEN soh.cost_price IS NULL OR soh.quantity <= 0
                    THEN EXCLUDED.cost_price
                ELSE round((soh.quantity * soh.cost_price
                            + EXCLUDED.quantity * EXCLUDED.cost_price)
                           / (soh.quantity + EXCLUDED.quantity), 4)
            END,
            quantity            = soh.quantity + EXCLUDED.quantity,
            last_cost_update_at = now(),
            updated_at          = now();
    ELSE
        INSERT INTO core.stock_on_hand AS soh (product_id, warehouse_id, quantity)
        VALUES (NEW.product_id, NEW.warehouse_id, v_delta)
        ON CONFLICT (product_id, warehouse_id) DO UPDATE
        SET quantity   = soh.quantity + EXCLUDED.quantity,
            updated_at = now();
    END IF;

    RETURN NULL;  -- AFTER trigger: return value ignored
END;
$$;

COMMENT ON FUNCTION core.stock_movement_update_cost() IS
    'Applies a new stock_movement row to stock_on_hand (weighted average cost on RECEIPT, quantity otherwise).';

DROP TRIGGER IF EXISTS stock_movement_update_cost ON core.stock_movement;
CREATE TRIGGER stock_movement_update_cost
    AFTER INSERT ON core.stock_movement
    FOR EACH ROW
    EXECUTE FUNCTION core.stock_movement_update_cost();

CREATE OR REPLACE FUNCTION core.brand_update_timestamp()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS brand_update_timestamp ON core.brand;
CREATE TRIGGER brand_update_timestamp
    BEFORE UPDATE ON core.brand
    FOR EACH ROW
    EXECUTE FUNCTION core.brand_update_timestamp();
