-- TPC-H's foreign keys (after the specification's schema), declared for the
-- benchmark's `--tpch-foreign-keys` runs (benches/tpch) and tests that want them: with
-- them, `init --keyed` leaves dimension INSERTs uncaptured (docs/keyed.md).
ALTER TABLE tpch.nation ADD FOREIGN KEY (n_regionkey) REFERENCES tpch.region (r_regionkey);
ALTER TABLE tpch.supplier ADD FOREIGN KEY (s_nationkey) REFERENCES tpch.nation (n_nationkey);
ALTER TABLE tpch.customer ADD FOREIGN KEY (c_nationkey) REFERENCES tpch.nation (n_nationkey);
ALTER TABLE tpch.partsupp ADD FOREIGN KEY (ps_partkey) REFERENCES tpch.part (p_partkey);
ALTER TABLE tpch.partsupp ADD FOREIGN KEY (ps_suppkey) REFERENCES tpch.supplier (s_suppkey);
ALTER TABLE tpch.orders ADD FOREIGN KEY (o_custkey) REFERENCES tpch.customer (c_custkey);
ALTER TABLE tpch.lineitem ADD FOREIGN KEY (l_orderkey) REFERENCES tpch.orders (o_orderkey);
-- The specification's (l_partkey, l_suppkey) → partsupp is left out: the benchmark's
-- new orders take any part and supplier, as tests/tpch.rs's do.
ALTER TABLE tpch.lineitem ADD FOREIGN KEY (l_partkey) REFERENCES tpch.part (p_partkey);
ALTER TABLE tpch.lineitem ADD FOREIGN KEY (l_suppkey) REFERENCES tpch.supplier (s_suppkey);
