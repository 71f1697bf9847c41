 SELECT customer.c_custkey,
    customer.c_name,
    sum((lineitem.l_extendedprice * ((1)::numeric - lineitem.l_discount))) AS revenue,
    customer.c_acctbal,
    nation.n_name,
    customer.c_address,
    customer.c_phone,
    customer.c_comment
   FROM tpch.customer,
    tpch.orders,
    tpch.lineitem,
    tpch.nation
  WHERE ((customer.c_custkey = orders.o_custkey) AND (lineitem.l_orderkey = orders.o_orderkey) AND (orders.o_orderdate >= '1993-10-01'::date) AND (orders.o_orderdate < ('1993-10-01'::date + '3 mons'::interval month)) AND (lineitem.l_returnflag = 'R'::bpchar) AND (customer.c_nationkey = nation.n_nationkey))
  GROUP BY customer.c_custkey, customer.c_name, customer.c_acctbal, customer.c_phone, nation.n_name, customer.c_address, customer.c_comment;
