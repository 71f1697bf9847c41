 SELECT lineitem.l_orderkey,
    sum((lineitem.l_extendedprice * ((1)::numeric - lineitem.l_discount))) AS revenue,
    orders.o_orderdate,
    orders.o_shippriority
   FROM tpch.customer,
    tpch.orders,
    tpch.lineitem
  WHERE ((customer.c_mktsegment = 'BUILDING'::bpchar) AND (customer.c_custkey = orders.o_custkey) AND (lineitem.l_orderkey = orders.o_orderkey) AND (orders.o_orderdate < '1995-03-15'::date) AND (lineitem.l_shipdate > '1995-03-15'::date))
  GROUP BY lineitem.l_orderkey, orders.o_orderdate, orders.o_shippriority;
