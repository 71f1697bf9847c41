 SELECT lineitem.l_returnflag,
    lineitem.l_linestatus,
    sum(lineitem.l_quantity) AS sum_qty,
    sum(lineitem.l_extendedprice) AS sum_base_price,
    sum((lineitem.l_extendedprice * ((1)::numeric - lineitem.l_discount))) AS sum_disc_price,
    sum(((lineitem.l_extendedprice * ((1)::numeric - lineitem.l_discount)) * ((1)::numeric + lineitem.l_tax))) AS sum_charge,
    avg(lineitem.l_quantity) AS avg_qty,
    avg(lineitem.l_extendedprice) AS avg_price,
    avg(lineitem.l_discount) AS avg_disc,
    count(*) AS count_order
   FROM tpch.lineitem
  WHERE (lineitem.l_shipdate <= ('1998-12-01'::date - '90 days'::interval day))
  GROUP BY lineitem.l_returnflag, lineitem.l_linestatus;
