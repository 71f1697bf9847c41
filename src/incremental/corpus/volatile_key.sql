 SELECT (((orders.o_orderkey)::double precision + floor((random() * (10)::double precision))))::integer AS k,
    orders.o_totalprice
   FROM tpch.orders;
