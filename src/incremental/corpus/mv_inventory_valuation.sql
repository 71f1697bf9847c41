 SELECT w.id AS warehouse_id,
    w.code AS warehouse_code,
    w.name AS warehouse_name,
    w.is_active,
    count(soh.id) FILTER (WHERE (soh.quantity > (0)::numeric)) AS products_in_stock,
    (COALESCE(sum(soh.quantity) FILTER (WHERE (soh.quantity > (0)::numeric)), (0)::numeric))::numeric(16,3) AS total_quantity,
    (COALESCE(sum(soh.total_value) FILTER (WHERE (soh.quantity > (0)::numeric)), (0)::numeric))::numeric(22,4) AS total_value,
    count(soh.id) FILTER (WHERE ((soh.quantity > (0)::numeric) AND (soh.cost_price IS NULL))) AS uncosted_items,
    max(soh.last_cost_update_at) AS last_cost_update_at
   FROM (core.warehouses w
     LEFT JOIN core.stock_on_hand soh ON ((soh.warehouse_id = w.id)))
  GROUP BY w.id;
