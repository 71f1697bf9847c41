 SELECT c.c_custkey,
    count(o.o_orderkey) AS orders,
    COALESCE(sum(o.o_totalprice), (0)::numeric) AS total
   FROM (tpch.customer c
     LEFT JOIN tpch.orders o ON ((o.o_custkey = c.c_custkey)))
  GROUP BY c.c_custkey;
