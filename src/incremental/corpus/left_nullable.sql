 SELECT n.n_nationkey,
    count(*) AS suppliers
   FROM (tpch.supplier s
     LEFT JOIN tpch.nation n ON ((n.n_nationkey = s.s_nationkey)))
  GROUP BY n.n_nationkey;
