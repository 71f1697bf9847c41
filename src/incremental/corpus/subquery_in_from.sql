 SELECT t.nation,
    t.revenue
   FROM ( SELECT n.n_name AS nation,
            sum(l.l_extendedprice) AS revenue
           FROM ((tpch.lineitem l
             JOIN tpch.supplier s ON ((s.s_suppkey = l.l_suppkey)))
             JOIN tpch.nation n ON ((n.n_nationkey = s.s_nationkey)))
          GROUP BY n.n_name) t;
