 SELECT p.id AS product_id,
    p.sku,
    p.name AS product_name,
    p.brand_id,
    b.name AS brand_name,
    p.supplier_id,
    s.name AS supplier_name,
    p.is_active,
    p.reorder_level,
    count(soh.id) FILTER (WHERE (soh.quantity > (0)::numeric)) AS warehouses_in_stock,
    (COALESCE(sum(soh.quantity), (0)::numeric))::numeric(16,3) AS total_quantity,
    (COALESCE(sum(soh.total_value) FILTER (WHERE (soh.quantity > (0)::numeric)), (0)::numeric))::numeric(22,4) AS total_value,
    round((sum(soh.total_value) FILTER (WHERE (soh.quantity > (0)::numeric)) / NULLIF(sum(soh.quantity) FILTER (WHERE ((soh.quantity > (0)::numeric) AND (soh.cost_price IS NOT NULL))), (0)::numeric)), 4) AS avg_cost_price,
    max(soh.last_cost_update_at) AS last_cost_update_at
   FROM (((core.products p
     LEFT JOIN core.brand b ON ((b.id = p.brand_id)))
     LEFT JOIN core.suppliers s ON ((s.id = p.supplier_id)))
     LEFT JOIN core.stock_on_hand soh ON ((soh.product_id = p.id)))
  GROUP BY p.id, b.id, s.id;
