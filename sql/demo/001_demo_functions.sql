-- =====================================================
-- refreshd: demo data generators — 001 functions
-- =====================================================
-- Purpose : Deterministic synthetic data behind the four materialized
--           views, and small random writes that make their triggers fire.
-- Creates : schema refreshd_demo
--           refreshd_demo.demo_uuid(kind, n), refreshd_demo.pick(salt, n)
--           refreshd_demo.generate_attendance(scale numeric) -> text
--           refreshd_demo.generate_inventory(scale numeric)  -> text
--           refreshd_demo.write_attendance(n integer)        -> integer
--           refreshd_demo.write_inventory(n integer)         -> integer
-- Run     : through sql/demo/install.sql, after both areas are installed.
--
-- Sizes (scale 1; every size but the fixed dimensions grows with scale):
--   attendance: 20 categories x 4 seasons (the last one active),
--               50 members per category, 286 sessions per category and
--               season, one record per member and completed session
--               -> ~1,000,000 member_attendance rows; scale 0.01 -> ~10,000.
--               Members and sessions both grow with sqrt(scale), so the
--               view keeps its 80 rows at every scale.
--   inventory:  10 warehouses, 50 suppliers, 22 brands, 20,000 products,
--               ~110,000 stock_on_hand rows, ~220,000 stock movements.
--
-- Determinism: no random() in the generators. Ids come from
-- demo_uuid(kind, n) (readable, ascending in insertion order, so index
-- inserts are appends) and every varying value from pick(salt, n), a hash
-- of the row number. Same scale, same data, on every run and machine.
-- write_* are random on purpose: they feed the live demo stream.
-- The generate functions first delete the demo rows of an earlier run
-- (recognised by their demo ids), so they can be called repeatedly.
--
-- Speed: two foreign-key checks per inserted row are most of the load
-- time (scale 1 attendance: ~35 s with them, ~15 s without). When the
-- caller is a superuser, as in refreshd's throwaway demo cluster, the bulk
-- INSERTs run with session_replication_role = replica, which skips all
-- triggers, foreign-key checks included; the generators only reference ids
-- they have just inserted, re-check every foreign key set-based afterwards,
-- and send the notifications the skipped triggers would have sent. Other
-- roles get the ordinary, checked, slower path. Either way the generators
-- end by refreshing the materialized views and refilling the keyed tables
-- (attendance/005, inventory/004) when those are installed.
-- =====================================================

DO $$
BEGIN
    IF to_regclass('public.member_attendance') IS NULL
       OR to_regclass('core.stock_movement') IS NULL THEN
        RAISE EXCEPTION 'refreshd_demo needs both areas: run sql/attendance/install.sql and sql/inventory/install.sql first';
    END IF;
END;
$$;

CREATE SCHEMA IF NOT EXISTS refreshd_demo;

COMMENT ON SCHEMA refreshd_demo IS
    'refreshd demo data generators; for throwaway databases only.';

-- kind (8 hex digits) + row number (12 hex digits) in a v4-shaped uuid:
-- 00000004-0000-4000-8000-00000000002a is session 42. Kinds: 1 category,
-- 2 season, 3 member, 4 session, 5 attendance, 11 warehouse, 12 supplier,
-- 13 brand, 14 product, 15 stock_on_hand, 16 stock_movement.
CREATE OR REPLACE FUNCTION refreshd_demo.demo_uuid(kind integer, n bigint)
RETURNS uuid
LANGUAGE sql
IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT (lpad(to_hex(kind), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid
$$;

-- Lowest and highest demo id of a kind: demo rows are a contiguous range.
CREATE OR REPLACE FUNCTION refreshd_demo.demo_uuid_min(kind integer)
RETURNS uuid
LANGUAGE sql
IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT refreshd_demo.demo_uuid(kind, 0) $$;

CREATE OR REPLACE FUNCTION refreshd_demo.demo_uuid_max(kind integer)
RETURNS uuid
LANGUAGE sql
IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT refreshd_demo.demo_uuid(kind, 281474976710655) $$;

-- Deterministic "dice": 0..9999 from a salt and a row number.
-- hashint8extended is the hash behind hash partitioning, stable across runs.
CREATE OR REPLACE FUNCTION refreshd_demo.pick(salt bigint, n bigint)
RETURNS integer
LANGUAGE sql
IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT ((hashint8extended(n, salt) & 2147483647) % 10000)::integer $$;

-- ---------------------------------------------------------------------
-- Attendance
-- ---------------------------------------------------------------------

CREATE OR REPLACE FUNCTION refreshd_demo.generate_attendance(scale numeric DEFAULT 1)
RETURNS text
LANGUAGE plpgsql
VOLATILE
SET work_mem = '64MB'
AS $$
DECLARE
    c_categories constant integer := 20;
    c_seasons    constant integer := 4;
    v_members    integer;   -- per category
    v_sessions   integer;   -- per category and season
    v_done_upto  integer;   -- sessions 1..v_done_upto of the active season are done
    v_rows       bigint;
    v_t0         timestamptz := clock_timestamp();
    v_fast       boolean := coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r
                                      WHERE r.rolname = current_user), false);
    v_srr        text := current_setting('session_replication_role');
BEGIN
    IF scale IS NULL OR scale <= 0 THEN
        RAISE EXCEPTION 'scale must be > 0, got %', scale;
    END IF;
    v_members   := greatest(1, round(50  * sqrt(scale)))::integer;
    v_sessions  := greatest(1, round(286 * sqrt(scale)))::integer;
    v_done_upto := ceil(0.6 * v_sessions)::integer;

    -- Remove an earlier run's rows (and anything attached to them).
    DELETE FROM public.member_attendance
    WHERE training_session_id BETWEEN refreshd_demo.demo_uuid_min(4) AND refreshd_demo.demo_uuid_max(4);
    DELETE FROM public.training_sessions
    WHERE id BETWEEN refreshd_demo.demo_uuid_min(4) AND refreshd_demo.demo_uuid_max(4);
    DELETE FROM public.members   -- cascades to their attendance elsewhere
    WHERE id BETWEEN refreshd_demo.demo_uuid_min(3) AND refreshd_demo.demo_uuid_max(3);
    DELETE FROM public.seasons
    WHERE id BETWEEN refreshd_demo.demo_uuid_min(2) AND refreshd_demo.demo_uuid_max(2);
    DELETE FROM public.categories
    WHERE id BETWEEN refreshd_demo.demo_uuid_min(1) AND refreshd_demo.demo_uuid_max(1);

    -- After the DELETEs, whose ON DELETE CASCADE must still fire.
    IF v_fast THEN
        PERFORM set_config('session_replication_role', 'replica', true);
    END IF;

    INSERT INTO public.categories (id, name)
    SELECT refreshd_demo.demo_uuid(1, c), format('Demo U%s', lpad((5 + c)::text, 2, '0'))
    FROM generate_series(1, c_categories) AS c;

    -- Fixed calendar (not current_date) so the data does not depend on the
    -- day it is generated. The latest season is the active one.
    INSERT INTO public.seasons (id, name, start_date, end_date, is_active)
    SELECT refreshd_demo.demo_uuid(2, k + 1),
           format('Demo %s/%s', 2022 + k, 23 + k),
           make_date(2022 + k, 8, 1),
           make_date(2023 + k, 6, 30),
           k = c_seasons - 1
    FROM generate_series(0, c_seasons - 1) AS k;

    INSERT INTO public.members (id, category_id, first_name, last_name)
    SELECT refreshd_demo.demo_uuid(3, n),
           refreshd_demo.demo_uuid(1, c),
           (ARRAY['Alex','Sam','Noah','Mia','Liam','Emma','Lucas','Zoe','Leo','Ava',
                  'Finn','Ida','Omar','Lea','Jan','Nora','Elias','Maya','Tom','Lina'])
               [1 + refreshd_demo.pick(31, n) % 20],
           (ARRAY['Berger','Novak','Silva','Kowalski','Jensen','Moreau','Rossi','Weber',
                  'Horvat','Costa','Meyer','Dubois','Nagy','Larsen','Popescu','Fischer'])
               [1 + refreshd_demo.pick(32, n) % 16]
    FROM generate_series(1, c_categories) AS c,
         generate_series(1, v_members) AS m,
         LATERAL (SELECT (c - 1) * v_members + m AS n) AS x
    ORDER BY n;

    -- Session n of category c, season k, number j (1..v_sessions), spread
    -- over 330 days from August 1st. About 3% cancelled; in the active
    -- season the first 60% are done, the rest still planned. Kept in a temp
    -- table because the attendance rows below need c and n again.
    CREATE TEMP TABLE demo_sessions ON COMMIT DROP AS
    SELECT n, c, k, j,
           make_date(2022 + k, 8, 1) + ((j - 1) * 330 / v_sessions)      AS session_date,
           time '17:00' + (refreshd_demo.pick(41, n) % 3) * interval '1 hour' AS start_time,
           CASE WHEN refreshd_demo.pick(42, n) < 300                   THEN 'cancelled'
                WHEN k = c_seasons - 1 AND j > v_done_upto            THEN 'planned'
                ELSE 'done' END                                        AS status
    FROM generate_series(1, c_categories) AS c,
         generate_series(0, c_seasons - 1) AS k,
         generate_series(1, v_sessions) AS j,
         LATERAL (SELECT ((c - 1) * c_seasons + k) * v_sessions + j AS n) AS x;

    INSERT INTO public.training_sessions
           (id, category_id, season_id, session_date, start_time, title, status)
    SELECT refreshd_demo.demo_uuid(4, s.n),
           refreshd_demo.demo_uuid(1, s.c),
           refreshd_demo.demo_uuid(2, s.k + 1),
           s.session_date, s.start_time, format('Training %s', s.j), s.status
    FROM pg_temp.demo_sessions s
    ORDER BY s.n;

    -- One record per member of the category for each completed session:
    -- 75% present, 8% late, 12% absent, 5% excused.
    INSERT INTO public.member_attendance
           (id, member_id, training_session_id, attendance_status, recorded_at)
    SELECT refreshd_demo.demo_uuid(5, a),
           refreshd_demo.demo_uuid(3, (s.c - 1) * v_members + m),
           refreshd_demo.demo_uuid(4, s.n),
           CASE WHEN p < 7500 THEN 'present'
                WHEN p < 8300 THEN 'late'
                WHEN p < 9500 THEN 'absent'
                ELSE 'excused' END,
           s.session_date + s.start_time + interval '90 minutes' + (p % 600) * interval '1 second'
    FROM pg_temp.demo_sessions s,
         generate_series(1, v_members) AS m,
         LATERAL (SELECT (s.n - 1) * v_members + m AS a) AS y,
         LATERAL (SELECT refreshd_demo.pick(51, a) AS p) AS z
    WHERE s.status = 'done'
    ORDER BY a;
    GET DIAGNOSTICS v_rows = ROW_COUNT;

    DROP TABLE pg_temp.demo_sessions;

    -- Statistics for the checks and the REFRESH below, and for refreshd's
    -- first REFRESH ... CONCURRENTLY.
    ANALYZE public.categories, public.seasons, public.members,
            public.training_sessions, public.member_attendance;

    IF v_fast THEN
        PERFORM set_config('session_replication_role', v_srr, true);
        -- What the skipped foreign-key checks would have verified.
        IF EXISTS (SELECT 1 FROM public.member_attendance ma
                   WHERE ma.training_session_id BETWEEN refreshd_demo.demo_uuid_min(4)
                                                    AND refreshd_demo.demo_uuid_max(4)
                     AND (NOT EXISTS (SELECT 1 FROM public.training_sessions ts
                                      WHERE ts.id = ma.training_session_id)
                          OR NOT EXISTS (SELECT 1 FROM public.members m WHERE m.id = ma.member_id)))
           OR EXISTS (SELECT 1 FROM public.training_sessions ts
                      WHERE ts.id BETWEEN refreshd_demo.demo_uuid_min(4) AND refreshd_demo.demo_uuid_max(4)
                        AND (NOT EXISTS (SELECT 1 FROM public.categories c WHERE c.id = ts.category_id)
                             OR NOT EXISTS (SELECT 1 FROM public.seasons se WHERE se.id = ts.season_id)))
           OR EXISTS (SELECT 1 FROM public.members m
                      WHERE m.id BETWEEN refreshd_demo.demo_uuid_min(3) AND refreshd_demo.demo_uuid_max(3)
                        AND NOT EXISTS (SELECT 1 FROM public.categories c WHERE c.id = m.category_id))
        THEN
            RAISE EXCEPTION 'refreshd_demo.generate_attendance: generated rows violate a foreign key (generator bug)';
        END IF;
        -- The notify triggers were skipped as well, the keyed ones of
        -- attendance/005 too: every group may have changed.
        PERFORM pg_notify('refresh_attendance_stats', '');
        PERFORM pg_notify('attendance_keys', '*');
    END IF;

    -- Plain REFRESH: nearly every row changed, and the view may be empty.
    REFRESH MATERIALIZED VIEW public.attendance_statistics_summary;
    -- Its keyed twin (attendance/005), when installed: a full recompute.
    IF to_regclass('public.attendance_statistics_live') IS NOT NULL THEN
        LOCK TABLE public.attendance_statistics_live IN SHARE ROW EXCLUSIVE MODE;
        DELETE FROM public.attendance_statistics_live;
        INSERT INTO public.attendance_statistics_live
        SELECT * FROM public.attendance_statistics_def;
    END IF;

    RETURN format('attendance: %s categories, %s seasons, %s members, %s sessions, %s member_attendance rows in %s s',
                  c_categories, c_seasons, c_categories * v_members,
                  c_categories * c_seasons * v_sessions, v_rows,
                  round(extract(epoch FROM clock_timestamp() - v_t0)::numeric, 1));
END;
$$;

COMMENT ON FUNCTION refreshd_demo.generate_attendance(numeric) IS
    'Replaces the demo attendance data: scale 1 ~ 1,000,000 member_attendance rows, 0.01 ~ 10,000. Deterministic.';

-- n small writes in the caller's transaction, as a club app would make
-- them: record or correct one member's attendance; a planned session
-- that gets attendance is first marked done (fires the session trigger).
CREATE OR REPLACE FUNCTION refreshd_demo.write_attendance(n integer DEFAULT 1)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
    r        record;
    v_member uuid;
    v_done   integer := 0;
BEGIN
    FOR r IN
        SELECT ts.id, ts.category_id, ts.status
        FROM public.training_sessions ts
        WHERE ts.status <> 'cancelled'
        ORDER BY random()
        LIMIT greatest(coalesce(n, 0), 0)
    LOOP
        SELECT m.id INTO v_member
        FROM public.members m
        WHERE m.category_id = r.category_id
        ORDER BY random()
        LIMIT 1;
        CONTINUE WHEN v_member IS NULL;

        IF r.status = 'planned' THEN
            UPDATE public.training_sessions
            SET status = 'done', updated_at = now()
            WHERE id = r.id;
        END IF;

        INSERT INTO public.member_attendance (member_id, training_session_id, attendance_status)
        VALUES (v_member, r.id,
                (ARRAY['present','present','present','present','present','present',
                       'late','absent','absent','excused'])[1 + floor(random() * 10)::integer])
        ON CONFLICT (member_id, training_session_id) DO UPDATE
        SET attendance_status = EXCLUDED.attendance_status,
            recorded_at       = now();
        v_done := v_done + 1;
    END LOOP;
    RETURN v_done;
END;
$$;

COMMENT ON FUNCTION refreshd_demo.write_attendance(integer) IS
    'n random attendance upserts (random sessions and members); returns the number of writes.';

-- ---------------------------------------------------------------------
-- Inventory
-- ---------------------------------------------------------------------

CREATE OR REPLACE FUNCTION refreshd_demo.generate_inventory(scale numeric DEFAULT 1)
RETURNS text
LANGUAGE plpgsql
VOLATILE
SET work_mem = '64MB'
AS $$
DECLARE
    c_brands      constant integer := 22;   -- the seed's "22 brands"
    v_warehouses  integer;
    v_suppliers   integer;
    v_products    integer;
    v_soh         bigint;
    v_movements   bigint;
    v_t0          timestamptz := clock_timestamp();
    v_fast        boolean := coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r
                                       WHERE r.rolname = current_user), false);
    v_srr         text := current_setting('session_replication_role');
BEGIN
    IF scale IS NULL OR scale <= 0 THEN
        RAISE EXCEPTION 'scale must be > 0, got %', scale;
    END IF;
    v_warehouses := greatest(2,  round(10 * sqrt(scale)))::integer;
    v_suppliers  := greatest(2,  round(50 * sqrt(scale)))::integer;
    v_products   := greatest(10, round(20000 * scale))::integer;

    DELETE FROM core.stock_movement
    WHERE product_id BETWEEN refreshd_demo.demo_uuid_min(14) AND refreshd_demo.demo_uuid_max(14);
    DELETE FROM core.stock_on_hand
    WHERE product_id BETWEEN refreshd_demo.demo_uuid_min(14) AND refreshd_demo.demo_uuid_max(14);
    DELETE FROM core.products
    WHERE id BETWEEN refreshd_demo.demo_uuid_min(14) AND refreshd_demo.demo_uuid_max(14);
    DELETE FROM core.brand
    WHERE id BETWEEN refreshd_demo.demo_uuid_min(13) AND refreshd_demo.demo_uuid_max(13);
    DELETE FROM core.suppliers
    WHERE id BETWEEN refreshd_demo.demo_uuid_min(12) AND refreshd_demo.demo_uuid_max(12);
    DELETE FROM core.warehouses
    WHERE id BETWEEN refreshd_demo.demo_uuid_min(11) AND refreshd_demo.demo_uuid_max(11);

    -- After the DELETEs, whose ON DELETE CASCADE must still fire.
    IF v_fast THEN
        PERFORM set_config('session_replication_role', 'replica', true);
    END IF;

    INSERT INTO core.warehouses (id, code, name)
    SELECT refreshd_demo.demo_uuid(11, w), format('DEMO-WH%s', lpad(w::text, 2, '0')),
           format('Demo warehouse %s', w)
    FROM generate_series(1, v_warehouses) AS w;

    INSERT INTO core.suppliers (id, name, contact_phone, contact_email, website, payment_terms)
    SELECT refreshd_demo.demo_uuid(12, s),
           format('Demo Supplier %s', lpad(s::text, 3, '0')),
           CASE WHEN refreshd_demo.pick(61, s) < 8000
                THEN format('+1-555-%s', lpad((refreshd_demo.pick(62, s))::text, 4, '0')) END,
           CASE WHEN refreshd_demo.pick(63, s) < 9000
                THEN format('orders@supplier%s.example', s) END,
           format('https://supplier%s.example', s),
           (ARRAY['NET30', 'NET60', 'COD', 'NET15'])[1 + refreshd_demo.pick(64, s) % 4]
    FROM generate_series(1, v_suppliers) AS s;

    INSERT INTO core.brand (id, name)
    SELECT refreshd_demo.demo_uuid(13, b), format('Demo Brand %s', lpad(b::text, 2, '0'))
    FROM generate_series(1, c_brands) AS b;

    -- ~80% of products have a brand (the seed's success criterion is >= 50%).
    INSERT INTO core.products (id, sku, name, brand_id, supplier_id, reorder_level, is_active)
    SELECT refreshd_demo.demo_uuid(14, p),
           format('DEMO-%s', lpad(p::text, 6, '0')),
           format('%s %s %s',
                  (ARRAY['Steel','Copper','Plastic','Oak','Glass','Rubber','Carbon','Alloy'])
                      [1 + refreshd_demo.pick(71, p) % 8],
                  (ARRAY['bolt','hinge','bracket','panel','valve','gasket','spring','clamp',
                         'washer','pipe'])[1 + refreshd_demo.pick(72, p) % 10],
                  p),
           CASE WHEN refreshd_demo.pick(73, p) < 8000
                THEN refreshd_demo.demo_uuid(13, 1 + refreshd_demo.pick(74, p) % c_brands) END,
           refreshd_demo.demo_uuid(12, 1 + refreshd_demo.pick(75, p) % v_suppliers),
           10 + refreshd_demo.pick(76, p) % 91,
           refreshd_demo.pick(77, p) >= 200                       -- 2% discontinued
    FROM generate_series(1, v_products) AS p;

    -- Stock history per (product, warehouse): one RECEIPT, then 0-2 ISSUEs;
    -- stock_on_hand is computed from exactly these movements, so both
    -- tables agree. The row-level cost trigger must not run for them
    -- (stock_on_hand is written set-based below instead): replica mode
    -- skips it, otherwise it is disabled for the bulk insert and enabled
    -- again before anyone else can see the table (DDL is transactional).
    -- A product is stocked in its home warehouse plus ~half of the others;
    -- ~3% of products are out of stock, ~7% more at or below their reorder level.
    CREATE TEMP TABLE demo_stock ON COMMIT DROP AS
    SELECT sn, p, w, on_hand, cost, issued1, issued2,
           timestamptz '2025-01-06 08:00+00' + (refreshd_demo.pick(81, sn) % 300) * interval '1 day'
               AS received_at
    FROM (
        SELECT x.sn, p, w,
               -- r = the product's reorder_level (same pick as above)
               CASE WHEN refreshd_demo.pick(82, p) < 300            -- out of stock
                    THEN 0
                    WHEN refreshd_demo.pick(82, p) < 1000           -- low or critical
                    THEN refreshd_demo.pick(83, x.sn)
                         % greatest(1, 2 * (10 + refreshd_demo.pick(76, p) % 91) / v_warehouses)
                    ELSE (10 + refreshd_demo.pick(76, p) % 91)
                         + refreshd_demo.pick(83, x.sn) % (4 * (10 + refreshd_demo.pick(76, p) % 91))
               END::numeric                                         AS on_hand,
               round((5 + refreshd_demo.pick(84, p) / 20.0)
                     * (0.9 + refreshd_demo.pick(85, x.sn) / 50000.0), 4) AS cost,
               CASE WHEN refreshd_demo.pick(86, x.sn) % 3 >= 1 THEN 1 + refreshd_demo.pick(87, x.sn) % 20 END
                                                                    AS issued1,
               CASE WHEN refreshd_demo.pick(86, x.sn) % 3 = 2  THEN 1 + refreshd_demo.pick(88, x.sn) % 20 END
                                                                    AS issued2
        FROM generate_series(1, v_products) AS p,
             generate_series(1, v_warehouses) AS w,
             LATERAL (SELECT (p - 1)::bigint * v_warehouses + w AS sn) AS x
        WHERE w = 1 + (p - 1) % v_warehouses
           OR refreshd_demo.pick(89, x.sn) < 5000
    ) AS s;

    IF NOT v_fast THEN
        ALTER TABLE core.stock_movement DISABLE TRIGGER stock_movement_update_cost;
    END IF;

    INSERT INTO core.stock_movement
           (id, movement_type, reference_type, reference_id, product_id, warehouse_id,
            quantity, cost_price, created_at, created_by)
    SELECT refreshd_demo.demo_uuid(16, m.sn * 3 + m.seq), m.movement_type::core.movement_type,
           m.reference_type::core.reference_type, m.reference_id,
           refreshd_demo.demo_uuid(14, m.p), refreshd_demo.demo_uuid(11, m.w),
           m.quantity, m.cost_price, m.created_at, 'refreshd_demo'
    FROM (
        SELECT d.sn, 0 AS seq, d.p, d.w, 'RECEIPT' AS movement_type, 'PURCHASE_ORDER' AS reference_type,
               format('PO-%s', d.sn) AS reference_id,
               d.on_hand + coalesce(d.issued1, 0) + coalesce(d.issued2, 0) AS quantity,
               d.cost AS cost_price, d.received_at AS created_at
        FROM pg_temp.demo_stock d
        WHERE d.on_hand + coalesce(d.issued1, 0) + coalesce(d.issued2, 0) > 0
        UNION ALL
        SELECT d.sn, 1, d.p, d.w, 'ISSUE', 'SALES_ORDER', format('SO-%s-1', d.sn),
               d.issued1, NULL, d.received_at + interval '3 days'
        FROM pg_temp.demo_stock d WHERE d.issued1 IS NOT NULL
        UNION ALL
        SELECT d.sn, 2, d.p, d.w, 'ISSUE', 'SALES_ORDER', format('SO-%s-2', d.sn),
               d.issued2, NULL, d.received_at + interval '9 days'
        FROM pg_temp.demo_stock d WHERE d.issued2 IS NOT NULL
    ) AS m
    ORDER BY m.sn, m.seq;
    GET DIAGNOSTICS v_movements = ROW_COUNT;

    IF NOT v_fast THEN
        ALTER TABLE core.stock_movement ENABLE TRIGGER stock_movement_update_cost;
    END IF;

    INSERT INTO core.stock_on_hand
           (id, product_id, warehouse_id, quantity, cost_price, last_cost_update_at, updated_at)
    SELECT refreshd_demo.demo_uuid(15, d.sn), refreshd_demo.demo_uuid(14, d.p),
           refreshd_demo.demo_uuid(11, d.w), d.on_hand, d.cost, d.received_at,
           d.received_at + interval '9 days'
    FROM pg_temp.demo_stock d
    ORDER BY d.sn;
    GET DIAGNOSTICS v_soh = ROW_COUNT;

    DROP TABLE pg_temp.demo_stock;

    ANALYZE core.warehouses, core.suppliers, core.brand, core.products,
            core.stock_on_hand, core.stock_movement;

    IF v_fast THEN
        PERFORM set_config('session_replication_role', v_srr, true);
        -- What the skipped foreign-key checks would have verified.
        IF EXISTS (SELECT 1 FROM core.stock_movement sm
                   WHERE sm.product_id BETWEEN refreshd_demo.demo_uuid_min(14)
                                           AND refreshd_demo.demo_uuid_max(14)
                     AND (NOT EXISTS (SELECT 1 FROM core.products p WHERE p.id = sm.product_id)
                          OR NOT EXISTS (SELECT 1 FROM core.warehouses w WHERE w.id = sm.warehouse_id)))
           OR EXISTS (SELECT 1 FROM core.stock_on_hand soh
                      WHERE soh.product_id BETWEEN refreshd_demo.demo_uuid_min(14)
                                               AND refreshd_demo.demo_uuid_max(14)
                        AND (NOT EXISTS (SELECT 1 FROM core.products p WHERE p.id = soh.product_id)
                             OR NOT EXISTS (SELECT 1 FROM core.warehouses w WHERE w.id = soh.warehouse_id)))
           OR EXISTS (SELECT 1 FROM core.products p
                      WHERE p.id BETWEEN refreshd_demo.demo_uuid_min(14) AND refreshd_demo.demo_uuid_max(14)
                        AND ((p.brand_id IS NOT NULL
                              AND NOT EXISTS (SELECT 1 FROM core.brand b WHERE b.id = p.brand_id))
                             OR (p.supplier_id IS NOT NULL
                                 AND NOT EXISTS (SELECT 1 FROM core.suppliers s WHERE s.id = p.supplier_id))))
        THEN
            RAISE EXCEPTION 'refreshd_demo.generate_inventory: generated rows violate a foreign key (generator bug)';
        END IF;
        -- The notify triggers were skipped as well, the keyed ones of
        -- inventory/004 too: every warehouse may have changed.
        PERFORM pg_notify('refresh_inventory_views', '');
        PERFORM pg_notify('inventory_keys', '*');
    END IF;

    -- Plain REFRESH in dependency order: summary before alerts.
    REFRESH MATERIALIZED VIEW core.mv_product_stock_summary;
    REFRESH MATERIALIZED VIEW core.mv_inventory_valuation;
    REFRESH MATERIALIZED VIEW core.mv_low_stock_alerts;
    -- The keyed twin of mv_inventory_valuation (inventory/004), when installed.
    IF to_regclass('core.inventory_valuation_live') IS NOT NULL THEN
        LOCK TABLE core.inventory_valuation_live IN SHARE ROW EXCLUSIVE MODE;
        DELETE FROM core.inventory_valuation_live;
        INSERT INTO core.inventory_valuation_live
        SELECT * FROM core.inventory_valuation_def;
    END IF;

    RETURN format('inventory: %s warehouses, %s suppliers, %s brands, %s products, %s stock_on_hand rows, %s stock movements in %s s',
                  v_warehouses, v_suppliers, c_brands, v_products, v_soh, v_movements,
                  round(extract(epoch FROM clock_timestamp() - v_t0)::numeric, 1));
END;
$$;

COMMENT ON FUNCTION refreshd_demo.generate_inventory(numeric) IS
    'Replaces the demo inventory data: scale 1 ~ 20,000 products, ~110,000 stock rows. Deterministic.';

-- n random stock movements, applied to stock_on_hand by the cost trigger
-- (whose writes fire the inv_views notify trigger): receipts at a cost
-- near the current one, issues never below zero.
CREATE OR REPLACE FUNCTION refreshd_demo.write_inventory(n integer DEFAULT 1)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
    r      record;
    v_done integer := 0;
BEGIN
    FOR r IN
        SELECT soh.product_id, soh.warehouse_id, soh.quantity, soh.cost_price
        FROM core.stock_on_hand soh
        ORDER BY random()
        LIMIT greatest(coalesce(n, 0), 0)
    LOOP
        IF r.quantity < 1 OR random() < 0.5 THEN
            INSERT INTO core.stock_movement
                   (movement_type, reference_type, reference_id, product_id, warehouse_id,
                    quantity, cost_price, created_by)
            VALUES ('RECEIPT', 'PURCHASE_ORDER', 'PO-DEMO-' || floor(random() * 1e6)::bigint,
                    r.product_id, r.warehouse_id,
                    1 + floor(random() * 50),
                    round(coalesce(r.cost_price, 10) * (0.9 + random() * 0.2)::numeric, 4),
                    'refreshd_demo');
        ELSE
            INSERT INTO core.stock_movement
                   (movement_type, reference_type, reference_id, product_id, warehouse_id,
                    quantity, created_by)
            VALUES ('ISSUE', 'SALES_ORDER', 'SO-DEMO-' || floor(random() * 1e6)::bigint,
                    r.product_id, r.warehouse_id,
                    least(floor(r.quantity), 1 + floor(random() * 20)),
                    'refreshd_demo');
        END IF;
        v_done := v_done + 1;
    END LOOP;
    RETURN v_done;
END;
$$;

COMMENT ON FUNCTION refreshd_demo.write_inventory(integer) IS
    'n random receipts/issues through core.stock_movement; returns the number of writes.';
