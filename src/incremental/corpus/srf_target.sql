 SELECT orders.o_orderkey,
    unnest(ARRAY[orders.o_custkey, orders.o_shippriority]) AS x
   FROM tpch.orders;
