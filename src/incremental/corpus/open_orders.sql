 SELECT orders.o_orderkey,
    orders.o_custkey,
    orders.o_totalprice
   FROM tpch.orders
  WHERE (orders.o_orderstatus = 'O'::bpchar);
