 SELECT o.o_orderkey,
    count(*) AS bands
   FROM (tpch.orders o
     JOIN tpch.price_band p ON (((o.o_totalprice >= p.lo) AND (o.o_totalprice <= p.hi))))
  GROUP BY o.o_orderkey;
