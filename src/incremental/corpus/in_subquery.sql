 SELECT orders.o_custkey,
    count(*) AS n
   FROM tpch.orders
  WHERE (orders.o_custkey IN ( SELECT customer.c_custkey
           FROM tpch.customer
          WHERE (customer.c_mktsegment = 'BUILDING'::bpchar)))
  GROUP BY orders.o_custkey;
