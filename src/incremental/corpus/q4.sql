 SELECT orders.o_orderpriority,
    count(*) AS order_count
   FROM tpch.orders
  WHERE ((orders.o_orderdate >= '1993-07-01'::date) AND (orders.o_orderdate < '1993-10-01'::date) AND (EXISTS ( SELECT lineitem.l_orderkey,
            lineitem.l_partkey,
            lineitem.l_suppkey,
            lineitem.l_linenumber
           FROM tpch.lineitem
          WHERE ((lineitem.l_orderkey = orders.o_orderkey) AND (lineitem.l_commitdate < lineitem.l_receiptdate)))))
  GROUP BY orders.o_orderpriority;
