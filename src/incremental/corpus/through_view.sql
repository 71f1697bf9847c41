 SELECT c.c_custkey,
    sum(oo.o_totalprice) AS open_total
   FROM (tpch.customer c
     JOIN tpch.open_orders oo ON ((oo.o_custkey = c.c_custkey)))
  GROUP BY c.c_custkey;
