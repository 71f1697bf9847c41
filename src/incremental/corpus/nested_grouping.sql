 SELECT per_cust.o_orderstatus,
    count(*) AS customers,
    sum(per_cust.n) AS orders
   FROM ( SELECT orders.o_custkey,
            orders.o_orderstatus,
            count(*) AS n
           FROM tpch.orders
          GROUP BY orders.o_custkey, orders.o_orderstatus) per_cust
  GROUP BY per_cust.o_orderstatus;
