 SELECT pss.product_id,
    pss.sku,
    pss.product_name,
    pss.brand_name,
    pss.supplier_id,
    pss.supplier_name,
    pss.total_quantity,
    pss.reorder_level,
    ((pss.reorder_level - pss.total_quantity))::numeric(16,3) AS shortfall,
        CASE
            WHEN (pss.total_quantity <= (0)::numeric) THEN 'OUT_OF_STOCK'::text
            WHEN (pss.total_quantity <= (pss.reorder_level / (2)::numeric)) THEN 'CRITICAL'::text
            ELSE 'LOW'::text
        END AS severity
   FROM core.mv_product_stock_summary pss
  WHERE (pss.is_active AND (pss.reorder_level > (0)::numeric) AND (pss.total_quantity <= pss.reorder_level));
