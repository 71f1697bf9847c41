//! Foreign keys that guard a table's INSERTs ([`super::inserts`]), on the corpus.

use super::tests::catalog;
use super::{derive, Catalog, Derivation};

/// TPC-H's foreign keys (the specification's), as a catalog reader would find them.
pub(super) fn with_tpch_keys(c: Catalog) -> Catalog {
    c.foreign_key(
        1,
        "l_o",
        "tpch.lineitem",
        &["l_orderkey"],
        "tpch.orders",
        &["o_orderkey"],
    )
    .foreign_key(
        2,
        "l_s",
        "tpch.lineitem",
        &["l_suppkey"],
        "tpch.supplier",
        &["s_suppkey"],
    )
    .foreign_key(
        3,
        "o_c",
        "tpch.orders",
        &["o_custkey"],
        "tpch.customer",
        &["c_custkey"],
    )
    .foreign_key(
        4,
        "c_n",
        "tpch.customer",
        &["c_nationkey"],
        "tpch.nation",
        &["n_nationkey"],
    )
    .foreign_key(
        5,
        "s_n",
        "tpch.supplier",
        &["s_nationkey"],
        "tpch.nation",
        &["n_nationkey"],
    )
    .foreign_key(
        6,
        "n_r",
        "tpch.nation",
        &["n_regionkey"],
        "tpch.region",
        &["r_regionkey"],
    )
    .foreign_key(
        7,
        "e_m",
        "tpch.employee",
        &["e_manager"],
        "tpch.employee",
        &["e_id"],
    )
}

fn derived_with(c: &Catalog, sql: &str, key: &[&str]) -> Derivation {
    derive(sql, key, c).unwrap_or_else(|e| panic!("{e}"))
}

/// Per table: the oids of the keys guarding each occurrence, or None (captured).
fn guards(d: &Derivation) -> Vec<(String, Option<Vec<Vec<u32>>>)> {
    d.tables
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.inserts.as_ref().map(|g| {
                    g.occurrences
                        .iter()
                        .map(|o| o.iter().map(|k| k.oid).collect())
                        .collect()
                }),
            )
        })
        .collect()
}

fn g(name: &str, occ: Option<&[&[u32]]>) -> (String, Option<Vec<Vec<u32>>>) {
    (
        name.into(),
        occ.map(|o| o.iter().map(|x| x.to_vec()).collect()),
    )
}

#[test]
fn q5_dimensions_are_guarded_by_the_rows_that_reference_them() {
    let c = with_tpch_keys(catalog());
    let d = derived_with(&c, include_str!("corpus/q5.sql"), &["n_name"]);
    // customer → nation is not equated directly (c_nationkey = s_nationkey =
    // n_nationkey): nation is guarded by supplier's key alone. lineitem is referenced
    // by nothing: its INSERTs are captured (applied as deltas).
    assert_eq!(
        guards(&d),
        [
            g("customer", Some(&[&[3]])),
            g("orders", Some(&[&[1]])),
            g("lineitem", None),
            g("supplier", Some(&[&[2]])),
            g("nation", Some(&[&[5]])),
            g("region", Some(&[&[6]])),
        ]
    );
    let orders = d.table("orders").unwrap().to_string();
    assert!(
        orders.contains("INSERT not captured")
            && orders.contains("tpch.lineitem (its foreign key l_o)"),
        "{orders}"
    );
    // The guard's keeper checks the key at each of refreshd's capture checks.
    let holds = d
        .table("orders")
        .unwrap()
        .inserts
        .as_ref()
        .unwrap()
        .keys_hold_sql();
    assert!(
        holds.contains("c.oid OPERATOR(pg_catalog.=) ANY (ARRAY[1]::pg_catalog.oid[])")
            && holds.contains("NOT c.condeferrable"),
        "{holds}"
    );
}

#[test]
fn without_foreign_keys_every_insert_is_captured() {
    let d = derived_with(&catalog(), include_str!("corpus/q5.sql"), &["n_name"]);
    assert!(d.tables.iter().all(|t| t.inserts.is_none()), "{d}");
}

#[test]
fn a_table_on_the_preserved_side_of_an_outer_join_is_not_guarded_by_the_nullable_side() {
    // A new customer is a new row (count 0): orders references it, but from the
    // nullable side of the LEFT JOIN.
    let c = with_tpch_keys(catalog());
    let d = derived_with(
        &c,
        include_str!("corpus/left_preserved.sql"),
        &["c_custkey"],
    );
    assert_eq!(guards(&d), [g("customer", None), g("orders", None)]);
}

#[test]
fn a_self_reference_guards_nothing() {
    // A new employee may be its own manager's row: the key references its own table.
    let c = with_tpch_keys(catalog());
    let d = derived_with(&c, include_str!("corpus/self_join.sql"), &["manager_id"]);
    assert_eq!(guards(&d), [g("employee", None)]);
}

#[test]
fn tables_guarding_each_other_in_a_cycle_leave_one_captured() {
    // a.b_id → b, b.a_id → a, both equated: one statement (a data-modifying CTE) can
    // insert a pair that references itself; one of the two must be captured.
    let c = Catalog::new()
        .table("public.a", &["id", "b_id", "v"])
        .table("public.b", &["id", "a_id", "name"])
        .foreign_key(10, "a_b", "public.a", &["b_id"], "public.b", &["id"])
        .foreign_key(11, "b_a", "public.b", &["a_id"], "public.a", &["id"]);
    let d = derived_with(
        &c,
        "SELECT b.name, sum(a.v) AS v FROM a JOIN b ON a.b_id = b.id AND b.a_id = a.id GROUP BY b.name",
        &["name"],
    );
    let gs = guards(&d);
    assert_eq!(gs.iter().filter(|(_, o)| o.is_some()).count(), 1, "{gs:?}");
}

#[test]
fn every_occurrence_needs_its_own_guard() {
    // nation twice: as the customer's and as the supplier's. Only the supplier's is
    // referenced by a key equated directly; the customer's nation is not guarded, so
    // a new nation's INSERT is captured.
    let c = with_tpch_keys(catalog());
    let sql = "SELECT cn.n_name AS cust_nation, sn.n_name AS supp_nation, sum(l.l_extendedprice) AS revenue \
               FROM tpch.lineitem l JOIN tpch.orders o ON o.o_orderkey = l.l_orderkey \
               JOIN tpch.customer cu ON cu.c_custkey = o.o_custkey \
               JOIN tpch.supplier s ON s.s_suppkey = l.l_suppkey \
               JOIN tpch.nation sn ON sn.n_nationkey = s.s_nationkey \
               JOIN tpch.nation cn ON cn.n_name = cu.c_comment \
               GROUP BY cn.n_name, sn.n_name";
    let d = derived_with(&c, sql, &["cust_nation", "supp_nation"]);
    assert_eq!(d.table("nation").unwrap().inserts, None, "{d}");
    assert!(d.table("orders").unwrap().inserts.is_some(), "{d}");
}

#[test]
fn a_composite_key_must_be_equated_on_every_column() {
    let c = Catalog::new()
        .table("public.item", &["shop", "sku", "name"])
        .table("public.sale", &["shop", "sku", "qty"])
        .foreign_key(
            20,
            "sale_item",
            "public.sale",
            &["shop", "sku"],
            "public.item",
            &["shop", "sku"],
        );
    let both = derived_with(
        &c,
        "SELECT i.name, sum(s.qty) AS qty FROM sale s JOIN item i ON i.shop = s.shop AND i.sku = s.sku GROUP BY i.name",
        &["name"],
    );
    assert!(both.table("item").unwrap().inserts.is_some(), "{both}");
    let one = derived_with(
        &c,
        "SELECT i.name, sum(s.qty) AS qty FROM sale s JOIN item i ON i.sku = s.sku GROUP BY i.name",
        &["name"],
    );
    assert_eq!(one.table("item").unwrap().inserts, None, "{one}");
}

/// Per table: the oids of the keys guarding its DELETEs under `fact`, by occurrence.
fn delete_guards(c: &Catalog, sql: &str, fact: &str) -> Vec<(String, Vec<Vec<u32>>)> {
    let select = super::parse::parse_view(sql).unwrap_or_else(|e| panic!("{e}"));
    let (lin, _) = super::lineage::resolve(&select, c).unwrap_or_else(|e| panic!("{e}"));
    super::inserts::delete_guards(&lin, c, fact, &|_| true)
        .into_iter()
        .map(|(t, g)| {
            let occ = g
                .occurrences
                .iter()
                .map(|o| o.iter().map(|k| k.oid).collect())
                .collect();
            (t, occ)
        })
        .collect()
}

#[test]
fn q5_deletes_are_guarded_along_the_keys_from_lineitem() {
    // A nation is deleted only after its suppliers, each only after its lineitems: every
    // row of the view losing a nation has lost its lineitem first. customer → nation is
    // not equated directly: nation is guarded through supplier alone, as for INSERTs.
    let c = with_tpch_keys(catalog());
    let q5 = include_str!("corpus/q5.sql");
    let t = |n: &str, o: &[&[u32]]| (format!("tpch.{n}"), o.iter().map(|x| x.to_vec()).collect());
    assert_eq!(
        delete_guards(&c, q5, "tpch.lineitem"),
        [
            t("customer", &[&[3]]),
            t("nation", &[&[5]]),
            t("orders", &[&[1]]),
            t("region", &[&[6]]),
            t("supplier", &[&[2]]),
        ]
    );
    // The chain must start at the fact table: with orders taking the deltas, nothing
    // references lineitem, and supplier (referenced by lineitem only) is not guarded.
    assert_eq!(
        delete_guards(&c, q5, "tpch.orders"),
        [t("customer", &[&[3]])]
    );
}

#[test]
fn a_delete_guard_needs_an_unbroken_chain_to_the_fact_table() {
    // Without lineitem → orders, an order may be deleted under its lineitems, and so
    // may its customer after it: neither is guarded; the supplier's chain holds.
    let mut c = with_tpch_keys(catalog());
    c.foreign_keys.retain(|k| k.oid != 1);
    let q5 = include_str!("corpus/q5.sql");
    let guarded: Vec<String> = delete_guards(&c, q5, "tpch.lineitem")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(guarded, ["tpch.nation", "tpch.region", "tpch.supplier"]);
}

#[test]
fn a_nullable_side_guards_no_delete() {
    // orders references customer from the nullable side of a LEFT JOIN: a customer
    // deleted with its orders (facts) leaves its row of the view (count 0) to a group
    // recompute.
    let c = with_tpch_keys(catalog());
    let sql = include_str!("corpus/left_preserved.sql");
    assert_eq!(delete_guards(&c, sql, "tpch.orders"), []);
}
