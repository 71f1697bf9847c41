 WITH big AS (
         SELECT orders.o_custkey,
            sum(orders.o_totalprice) AS total,
            count(*) AS n
           FROM tpch.orders
          GROUP BY orders.o_custkey
        )
 SELECT b.o_custkey,
    c.c_name,
    b.total,
    b.n
   FROM (big b
     JOIN tpch.customer c ON ((c.c_custkey = b.o_custkey)));
