-- The indexes a user would have on TPC-H's join columns (tests/support/tpch.rs, benches/tpch).
CREATE INDEX ON tpch.lineitem (l_orderkey);
CREATE INDEX ON tpch.lineitem (l_suppkey);
CREATE INDEX ON tpch.orders (o_custkey);
CREATE INDEX ON tpch.customer (c_nationkey);
CREATE INDEX ON tpch.supplier (s_nationkey);
CREATE INDEX ON tpch.nation (n_regionkey);
CREATE INDEX ON tpch.partsupp (ps_partkey);
CREATE INDEX ON tpch.partsupp (ps_suppkey);
