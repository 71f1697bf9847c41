 SELECT date_trunc('month'::text, (orders.o_orderdate)::timestamp without time zone) AS month,
    sum(orders.o_totalprice) AS total,
    count(*) AS n
   FROM tpch.orders
  GROUP BY (date_trunc('month'::text, (orders.o_orderdate)::timestamp without time zone));
