 SELECT nation.n_name,
    sum((lineitem.l_extendedprice * ((1)::numeric - lineitem.l_discount))) AS revenue
   FROM tpch.customer,
    tpch.orders,
    tpch.lineitem,
    tpch.supplier,
    tpch.nation,
    tpch.region
  WHERE ((customer.c_custkey = orders.o_custkey) AND (lineitem.l_orderkey = orders.o_orderkey) AND (lineitem.l_suppkey = supplier.s_suppkey) AND (customer.c_nationkey = supplier.s_nationkey) AND (supplier.s_nationkey = nation.n_nationkey) AND (nation.n_regionkey = region.r_regionkey) AND (region.r_name = 'ASIA'::bpchar) AND (orders.o_orderdate >= '1994-01-01'::date) AND (orders.o_orderdate < ('1994-01-01'::date + '1 year'::interval year)))
  GROUP BY nation.n_name;
