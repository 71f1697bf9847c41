 SELECT lineitem.l_returnflag,
    count(*) FILTER (WHERE (lineitem.l_discount > 0.05)) AS discounted,
    avg(lineitem.l_quantity) FILTER (WHERE (lineitem.l_tax > (0)::numeric)) AS avg_taxed_qty,
    (sum(lineitem.l_quantity) - sum(lineitem.l_quantity) FILTER (WHERE (lineitem.l_tax > (0)::numeric))) AS untaxed_qty
   FROM tpch.lineitem
  GROUP BY lineitem.l_returnflag;
