 SELECT orders.o_custkey,
    count(DISTINCT orders.o_orderstatus) AS statuses,
    count(*) AS n,
    min(orders.o_orderdate) AS first_order
   FROM tpch.orders
  GROUP BY orders.o_custkey;
