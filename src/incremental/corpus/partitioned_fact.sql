 SELECT c.name AS category,
    sum(s.amount) AS revenue,
    count(*) AS sales
   FROM ((tpch.sales s
     JOIN tpch.product p ON ((p.id = s.product_id)))
     JOIN tpch.category c ON ((c.id = p.category_id)))
  GROUP BY c.name;
