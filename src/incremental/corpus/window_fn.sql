 SELECT orders.o_orderkey,
    rank() OVER (ORDER BY orders.o_totalprice) AS price_rank
   FROM tpch.orders;
