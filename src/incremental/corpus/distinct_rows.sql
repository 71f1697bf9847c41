 SELECT DISTINCT orders.o_custkey,
    orders.o_orderstatus
   FROM tpch.orders;
