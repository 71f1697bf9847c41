 SELECT m.e_id AS manager_id,
    m.e_name AS manager_name,
    count(*) AS reports
   FROM (tpch.employee e
     JOIN tpch.employee m ON ((m.e_id = e.e_manager)))
  GROUP BY m.e_id, m.e_name;
