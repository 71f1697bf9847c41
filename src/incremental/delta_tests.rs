//! Delta application ([`super::delta`]) on the corpus: which views take deltas, on
//! which table, how each column is kept, and why the others do not. The SQL itself is
//! run against PostgreSQL in tests/delta_apply.rs.

use super::delta::{delta_plan, DeltaFacts, DeltaPlan, DeltaTable, NoDelta};
use super::tests::{catalog, derived};
use super::*;
use crate::pg::ident::QualifiedName;

/// The plan for `sql` keyed by `key`: view columns typed by their class (keys and
/// grouping values text, counts bigint, other aggregates numeric unless `types` says),
/// every base table with the catalog's columns, NOT NULL unless listed in `nullable`,
/// `rows` estimated rows (default 1000).
fn plan_with(
    sql: &str,
    key: &[&str],
    types: &[(&str, &str)],
    nullable: &[&str],
    rows: &[(&str, f64)],
) -> Result<DeltaPlan, NoDelta> {
    plan_in(&catalog(), sql, key, types, nullable, rows)
}

/// [`plan_with`] on another catalog (foreign keys added, say).
fn plan_in(
    cat: &Catalog,
    sql: &str,
    key: &[&str],
    types: &[(&str, &str)],
    nullable: &[&str],
    rows: &[(&str, f64)],
) -> Result<DeltaPlan, NoDelta> {
    let d = derive(sql, key, cat).unwrap_or_else(|e| panic!("{e}"));
    let cat = cat.clone();
    let columns: Vec<(String, String)> = d
        .columns
        .iter()
        .map(|c| (c.name.clone(), view_column_type(c, types)))
        .collect();
    let tables: Vec<DeltaTable> = d
        .tables
        .iter()
        .map(|t| base_table(t, &cat, types, nullable, rows))
        .collect();
    let view = QualifiedName::new("tpch", "v");
    let live = QualifiedName::new("tpch", "v_live");
    delta_plan(
        &d,
        &DeltaFacts {
            view: &view,
            live: &live,
            definition: sql,
            columns: &columns,
            equality: &[],
            catalog: &cat,
            tables: &tables,
            fact: None,
        },
    )
}

/// The type [`plan_with`] gives a view column: from `types` if listed there, else
/// bigint for counts, numeric for other aggregates, text for keys and grouping values.
fn view_column_type(c: &ColumnDerivation, types: &[(&str, &str)]) -> String {
    match types.iter().find(|(n, _)| *n == c.name) {
        Some((_, t)) => t.to_string(),
        None => match &c.class {
            ColumnClass::Delta { aggregates }
                if aggregates.iter().all(|a| a.starts_with("count")) =>
            {
                "bigint".into()
            }
            ColumnClass::Delta { .. } | ColumnClass::GroupRecompute { .. } => "numeric".into(),
            _ => "text".into(),
        },
    }
}

/// The facts [`plan_with`] gives a base table: the catalog's columns, typed by
/// `types` (`table.column`) or numeric, NOT NULL unless listed in `nullable`, and the
/// estimated rows from `rows` (default 1000).
fn base_table(
    t: &TableDerivation,
    cat: &Catalog,
    types: &[(&str, &str)],
    nullable: &[&str],
    rows: &[(&str, f64)],
) -> DeltaTable {
    let (s, n) = t.table.split_once('.').unwrap();
    let rel = cat.lookup(Some(s), n).unwrap();
    DeltaTable {
        table: t.table.clone(),
        name: QualifiedName::new(s, n),
        columns: rel
            .columns
            .iter()
            .map(|c| {
                let ty = types
                    .iter()
                    .find(|(x, _)| *x == format!("{n}.{c}"))
                    .map(|(_, t)| t.to_string())
                    .unwrap_or_else(|| "numeric".to_string());
                (c.clone(), ty)
            })
            .collect(),
        not_null: rel
            .columns
            .iter()
            .filter(|c| !nullable.contains(&c.as_str()))
            .cloned()
            .collect(),
        incomparable: Vec::new(),
        generated: Vec::new(),
        row_security: false,
        estimated_rows: rows
            .iter()
            .find(|(r, _)| *r == n)
            .map(|(_, x)| *x)
            .unwrap_or(1000.0),
    }
}

fn plan(sql: &str, key: &[&str]) -> DeltaPlan {
    plan_with(sql, key, &[], &[], &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn no_delta(sql: &str, key: &[&str]) -> String {
    match plan_with(sql, key, &[], &[], &[]) {
        Ok(p) => panic!("a plan, expected a refusal: {p:#?}"),
        Err(e) => e.reason,
    }
}

/// The attendance view groups a grouped CTE (per member, then per category and
/// season): nested grouping, refused with the column and the reason.
#[test]
fn attendance_is_refused_for_nested_grouping() {
    let r = no_delta(
        include_str!("corpus/attendance_statistics_summary.sql"),
        &["category_id", "season_id"],
    );
    assert_eq!(
        r,
        "column total_attendance_records: nested grouping (sum over a grouped subquery)"
    );
}

/// The inventory seed's views: max(), expressions over sums, the fact table on the
/// nullable side of a LEFT JOIN, a view over a materialized view without aggregates.
#[test]
fn inventory_views_are_refused() {
    assert_eq!(
        no_delta(
            include_str!("corpus/mv_inventory_valuation.sql"),
            &["warehouse_id"]
        ),
        "column last_cost_update_at: max (a delete cannot be undone from the change)"
    );
    assert_eq!(
        no_delta(
            include_str!("corpus/mv_product_stock_summary.sql"),
            &["product_id"]
        ),
        "column last_cost_update_at: max (a delete cannot be undone from the change)"
    );
    assert_eq!(
        no_delta(
            include_str!("corpus/mv_low_stock_alerts.sql"),
            &["product_id"]
        ),
        "the view does not group"
    );
    // Without max(): the stock rows are on the nullable side of the LEFT JOIN, so
    // they cannot take deltas; the warehouses (the preserved side) can.
    let sql = "SELECT w.id AS warehouse_id, count(soh.id) AS n, sum(soh.quantity) AS q
           FROM core.warehouses w LEFT JOIN core.stock_on_hand soh ON soh.warehouse_id = w.id
          GROUP BY w.id";
    let p = plan_with(sql, &["warehouse_id"], &[], &[], &[("stock_on_hand", 1e6)]).unwrap();
    assert_eq!(p.fact, "core.warehouses");
    let d = derived(sql, &["warehouse_id"]);
    let cat = catalog();
    let tables = vec![DeltaTable {
        table: "core.stock_on_hand".into(),
        name: QualifiedName::new("core", "stock_on_hand"),
        columns: vec![("warehouse_id".into(), "int".into())],
        not_null: Vec::new(),
        incomparable: Vec::new(),
        generated: Vec::new(),
        row_security: false,
        estimated_rows: 1.0,
    }];
    let cols = vec![
        ("warehouse_id".to_string(), "int".to_string()),
        ("n".to_string(), "bigint".to_string()),
        ("q".to_string(), "numeric".to_string()),
    ];
    let view = QualifiedName::new("core", "v");
    let r = delta_plan(
        &d,
        &DeltaFacts {
            view: &view,
            live: &view,
            definition: sql,
            columns: &cols,
            equality: &[],
            catalog: &cat,
            tables: &tables,
            fact: Some("core.stock_on_hand"),
        },
    )
    .unwrap_err()
    .reason;
    assert_eq!(
        r,
        "core.stock_on_hand cannot take deltas: it is on the nullable side of an outer join"
    );
    // An expression over aggregates: the live table keeps no hidden sum.
    let r = no_delta(
        "SELECT soh.warehouse_id, (COALESCE(sum(soh.quantity), 0::numeric))::numeric(16,3) AS q
           FROM core.stock_on_hand soh GROUP BY soh.warehouse_id",
        &["warehouse_id"],
    );
    assert!(
        r.starts_with("column q is an expression over aggregates"),
        "{r}"
    );
}

/// TPC-H Q1 as written: avg(l_discount) has no sum(l_discount) next to it, and the live
/// table keeps no hidden columns, so its groups are recomputed (refused, with the
/// reason). The Q1-like form below (each avg with its sum) takes deltas.
#[test]
fn tpch_q1() {
    q1_as_written();
    let p = q1_like_plan();
    q1_like_sql(&p);
}

/// Q1 as written is refused; with l_discount numeric(15,2) its avg_disc keeps the
/// old sum as the old average times the old count, rounded.
fn q1_as_written() {
    let r = no_delta(
        include_str!("corpus/q1.sql"),
        &["l_returnflag", "l_linestatus"],
    );
    assert!(
        r.starts_with("column avg_disc: avg without its sum among the view's columns needs a plain column of the fact table with a fixed scale"),
        "{r}"
    );
    // With l_discount numeric(15,2), as TPC-H declares it: the old sum is the old
    // average times the old count, rounded to two decimals.
    let p = plan_with(
        include_str!("corpus/q1.sql"),
        &["l_returnflag", "l_linestatus"],
        &[("lineitem.l_discount", "numeric(15,2)")],
        &[],
        &[],
    )
    .unwrap();
    assert!(
        p.notes.contains(
            &"avg_disc: avg, (old avg × old count_order + added - removed) / count_order".into()
        ),
        "{:?}",
        p.notes
    );
    assert!(p
        .notes
        .contains(&"avg_qty: avg, sum_qty / count_order".into()));
    assert!(
        p.apply[0]
            .contains("round(COALESCE(l.\"avg_disc\", 0) * COALESCE(l.\"count_order\", 0), 2)"),
        "{}",
        p.apply[0]
    );
}

/// The Q1-like form (each avg with its sum): its buffer, captured columns and notes.
fn q1_like_plan() -> DeltaPlan {
    let sql = "SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty, \
               sum(l_extendedprice*(1-l_discount)) AS sum_disc_price, avg(l_quantity) AS avg_qty, \
               count(*) AS count_order \
               FROM tpch.lineitem WHERE l_shipdate <= date '1998-09-02' GROUP BY 1,2";
    let p = plan(sql, &["l_returnflag", "l_linestatus"]);
    assert_eq!(p.fact, "tpch.lineitem");
    assert_eq!(p.buffer, QualifiedName::new("refreshd", "tpch_v_delta"));
    assert_eq!(p.recheck, QualifiedName::new("refreshd", "tpch_v_recheck"));
    assert_eq!(p.sign_column, "refreshd_sign");
    assert_eq!(
        p.columns,
        [
            "l_quantity",
            "l_extendedprice",
            "l_discount",
            "l_returnflag",
            "l_linestatus",
            "l_shipdate"
        ]
    );
    assert_eq!(
        p.notes,
        [
            "l_returnflag: key (from the delta's group)",
            "l_linestatus: key (from the delta's group)",
            "count_order: count, old + added - removed",
            "sum_qty: sum, old + added - removed, NULL when count_order reaches 0",
            "sum_disc_price: sum, old + added - removed, NULL when count_order reaches 0",
            "avg_qty: avg, sum_qty / count_order",
        ]
    );
    p
}

/// The Q1-like form's SQL: the apply statement, the capture and the recheck.
fn q1_like_sql(p: &DeltaPlan) {
    let apply = &p.apply[0];
    assert!(
        apply.starts_with(
            "WITH \"refreshd_delta_rows\" AS (SELECT * FROM \"refreshd\".\"tpch_v_take\"()),"
        ),
        "{apply}"
    );
    // The take function consumes the buffer, with a small row estimate, and only its
    // owner (the consume function) may call it.
    assert!(
        p.install.iter().any(|s| s.starts_with(
            "CREATE OR REPLACE FUNCTION \"refreshd\".\"tpch_v_take\"() RETURNS SETOF \"refreshd\".\"tpch_v_delta\" LANGUAGE sql VOLATILE ROWS 10"
        ) && s.ends_with("AS $refreshd_take$DELETE FROM \"refreshd\".\"tpch_v_delta\" RETURNING *$refreshd_take$")),
        "{:?}",
        p.install
    );
    assert!(p.install.contains(
        &"REVOKE ALL ON FUNCTION \"refreshd\".\"tpch_v_take\"() FROM PUBLIC".to_string()
    ));
    assert_eq!(
        p.rollback[0],
        "DROP FUNCTION IF EXISTS \"refreshd\".\"tpch_v_take\"()"
    );
    assert!(
        apply.contains("FROM refreshd_delta_rows lineitem WHERE"),
        "{apply}"
    );
    assert!(
        apply.contains("GROUP BY l_returnflag, l_linestatus"),
        "{apply}"
    );
    assert!(
        apply.contains("sum(l_quantity) FILTER (WHERE lineitem.refreshd_sign > 0)"),
        "{apply}"
    );
    assert!(
        apply.contains("ON CONFLICT (\"l_returnflag\", \"l_linestatus\") DO UPDATE SET"),
        "{apply}"
    );
    assert_eq!(
        p.capture_insert,
        "INSERT INTO \"refreshd\".\"tpch_v_delta\" (\"refreshd_sign\", \"l_quantity\", \"l_extendedprice\", \"l_discount\", \"l_returnflag\", \"l_linestatus\", \"l_shipdate\") SELECT 1, n.\"l_quantity\", n.\"l_extendedprice\", n.\"l_discount\", n.\"l_returnflag\", n.\"l_linestatus\", n.\"l_shipdate\" FROM new_rows n"
    );
    assert!(p.capture_update.contains("EXCEPT ALL"));
    assert_eq!(
        p.recheck_keys,
        "DELETE FROM \"refreshd\".\"tpch_v_recheck\" RETURNING \"l_returnflag\", \"l_linestatus\""
    );
}

/// The brief's Q1-like form: positional GROUP BY, avg's count from count(*) because
/// l_quantity is NOT NULL; with l_quantity nullable, avg has no count of its inputs.
#[test]
fn q1_like_positional_group_by() {
    let sql = "SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sq, \
               sum(l_extendedprice*(1-l_discount)) AS sd, avg(l_quantity) AS aq, count(*) AS n \
               FROM tpch.lineitem WHERE l_shipdate <= date '1998-09-02' GROUP BY 1,2";
    let p = plan(sql, &["l_returnflag", "l_linestatus"]);
    assert!(
        p.apply[0].contains("GROUP BY l_returnflag, l_linestatus"),
        "{}",
        p.apply[0]
    );
    assert!(
        p.notes.contains(&"aq: avg, sq / n".to_string()),
        "{:?}",
        p.notes
    );
    let r = plan_with(
        sql,
        &["l_returnflag", "l_linestatus"],
        &[],
        &["l_quantity"],
        &[],
    )
    .unwrap_err()
    .reason;
    assert!(
        r.starts_with("column aq: avg needs the sum and the count"),
        "{r}"
    );
    // A nullable argument of a sum without avg: the sum's groups losing a non-NULL
    // input are rechecked.
    let sql2 =
        "SELECT l_returnflag, sum(l_quantity) AS sq, count(*) AS n FROM tpch.lineitem GROUP BY 1";
    let p = plan_with(sql2, &["l_returnflag"], &[], &["l_quantity"], &[]).unwrap();
    assert!(
        p.notes[2].contains("a group losing a non-NULL input is recomputed"),
        "{:?}",
        p.notes
    );
}

/// Q5 has no count(*), but revenue's input (NOT NULL columns) is never NULL: a group
/// losing rows is probed, not recomputed.
fn q5_probes_groups_losing_rows(p: &DeltaPlan) {
    assert!(p
        .notes
        .iter()
        .any(|n| n.starts_with("groups losing rows are probed")));
    let probe = p.probe.as_deref().expect("probed");
    assert!(
        probe.contains(&format!("FOR \"refreshd_probe_row\" IN DELETE FROM {} RETURNING * LOOP", p.probe_table.quoted()))
            && probe.contains("IF NOT EXISTS (SELECT 1 FROM tpch.customer, tpch.orders, tpch.lineitem, tpch.supplier, tpch.nation, tpch.region WHERE (")
            && probe.contains(") AND (nation.n_name) OPERATOR(pg_catalog.=) \"refreshd_probe_row\".\"n_name\")")
            && probe.contains("DELETE FROM \"tpch\".\"v_live\" AS l WHERE l.\"n_name\" OPERATOR(pg_catalog.=) \"refreshd_probe_row\".\"n_name\""),
        "{probe}"
    );
    assert!(
        p.apply[0].contains("\"refreshd_pr\" AS (INSERT INTO"),
        "{}",
        p.apply[0]
    );
}

/// Q5: six tables, grouped by the nation's name. The fact is lineitem (the largest);
/// no other table reaches the key through it. No count(*): groups losing rows are
/// rechecked.
#[test]
fn tpch_q5() {
    let sql = include_str!("corpus/q5.sql");
    let p = plan_with(
        sql,
        &["n_name"],
        &[],
        &[],
        &[("lineitem", 600_000.0), ("orders", 150_000.0)],
    )
    .unwrap();
    assert_eq!(p.fact, "tpch.lineitem");
    assert_eq!(
        p.columns,
        ["l_orderkey", "l_suppkey", "l_extendedprice", "l_discount"]
    );
    q5_probes_groups_losing_rows(&p);
    assert!(
        p.apply[0].contains("refreshd_delta_rows lineitem"),
        "{}",
        p.apply[0]
    );
    // The caller may name another fact table (orders is read once, not nullable, and
    // nothing reaches the key through it).
    let d = derived(sql, &["n_name"]);
    let cat = catalog();
    let tables: Vec<DeltaTable> = d
        .tables
        .iter()
        .map(|t| {
            let (s, n) = t.table.split_once('.').unwrap();
            DeltaTable {
                table: t.table.clone(),
                name: QualifiedName::new(s, n),
                columns: cat
                    .lookup(Some(s), n)
                    .unwrap()
                    .columns
                    .iter()
                    .map(|c| (c.clone(), "numeric".into()))
                    .collect(),
                not_null: Vec::new(),
                incomparable: Vec::new(),
                generated: Vec::new(),
                row_security: false,
                estimated_rows: 1.0,
            }
        })
        .collect();
    let cols = vec![
        ("n_name".to_string(), "text".to_string()),
        ("revenue".to_string(), "numeric".to_string()),
    ];
    let view = QualifiedName::new("tpch", "q5");
    let r = delta_plan(
        &d,
        &DeltaFacts {
            view: &view,
            live: &view,
            definition: sql,
            columns: &cols,
            equality: &[],
            catalog: &cat,
            tables: &tables,
            fact: Some("tpch.orders"),
        },
    )
    .unwrap();
    assert_eq!(r.fact, "tpch.orders");
    assert!(
        r.apply[0].contains("refreshd_delta_rows orders"),
        "{}",
        r.apply[0]
    );
}

/// Q5 with TPC-H's foreign keys: every dimension's DELETEs keep their rows for the
/// apply, which reads each dimension together with its tombstones (by index, as the
/// dimension itself), and the refresh checks for a tombstone found twice first.
#[test]
fn tpch_q5_with_foreign_keys_keeps_deleted_dimension_rows() {
    let c = super::inserts_tests::with_tpch_keys(catalog());
    let p = plan_in(
        &c,
        include_str!("corpus/q5.sql"),
        &["n_name"],
        &[],
        &[],
        &[("lineitem", 600_000.0), ("orders", 150_000.0)],
    )
    .unwrap();
    assert_eq!(p.fact, "tpch.lineitem");
    let tombs: Vec<(&str, &str)> = p
        .tombs
        .iter()
        .map(|t| (t.table.as_str(), t.matching[0][0].as_str()))
        .collect();
    assert_eq!(
        tombs,
        [
            ("tpch.customer", "c_custkey"),
            ("tpch.nation", "n_nationkey"),
            ("tpch.orders", "o_orderkey"),
            ("tpch.region", "r_regionkey"),
            ("tpch.supplier", "s_suppkey")
        ]
    );
    let orders = &p.tombs[2];
    assert_eq!(
        orders
            .columns
            .iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>(),
        ["o_orderkey", "o_custkey", "o_orderdate"]
    );
    assert_eq!(
        orders.capture,
        format!(
            "INSERT INTO {} (\"o_orderkey\", \"o_custkey\", \"o_orderdate\") SELECT o.\"o_orderkey\", o.\"o_custkey\", o.\"o_orderdate\" FROM old_rows o",
            orders.buffer.quoted()
        )
    );
    for apply in [&p.apply[0], &p.apply_bulk] {
        assert!(
            apply.contains(&format!(
                "(SELECT o_orderkey, o_custkey, o_orderdate FROM tpch.orders UNION ALL SELECT o_orderkey, o_custkey, o_orderdate FROM refreshd.{}) orders",
                orders.buffer.name
            )),
            "{apply}"
        );
    }
    assert!(p.install.iter().any(|s| s.starts_with(&format!(
        "CREATE UNLOGGED TABLE IF NOT EXISTS {}",
        orders.buffer.quoted()
    ))));
    assert!(p
        .tomb_conflicts
        .as_deref()
        .is_some_and(|c| c.contains("u.ctid")));
    near_tables_are_emptied(&p);
    // Without the keys: no tombstones.
    let plain = plan_with(
        include_str!("corpus/q5.sql"),
        &["n_name"],
        &[],
        &[],
        &[("lineitem", 600_000.0), ("orders", 150_000.0)],
    )
    .unwrap();
    assert!(plain.tombs.is_empty() && plain.tomb_conflicts.is_none());
}

/// Q5's tombstone and near tables are all emptied after the apply; a near table for each
/// tombstoned table a join path of another table crosses.
fn near_tables_are_emptied(p: &DeltaPlan) {
    let near: Vec<&str> = p
        .tombs
        .iter()
        .filter_map(|t| t.near.as_ref().map(|n| n.buffer.name.as_str()))
        .collect();
    assert_eq!(p.tomb_cleanup.len(), 5 + near.len(), "{near:?}");
    assert!(
        near.iter().any(|n| n.contains("_near_customer_")),
        "orders reach the key (n_name) through customer: {near:?}"
    );
}

/// FILTER: each aggregate's contribution keeps its filter; a filtered sum's count is
/// the count(*) with the same filter (its input NOT NULL).
#[test]
fn filter() {
    let sql = "SELECT s.product_id, count(*) AS n, count(*) FILTER (WHERE s.amount > 10) AS big, \
               sum(s.amount) FILTER (WHERE s.amount > 10) AS big_amount \
               FROM tpch.sales s GROUP BY s.product_id";
    let p = plan(sql, &["product_id"]);
    assert_eq!(p.fact, "tpch.sales");
    assert!(
        p.notes
            .contains(&"big_amount: sum, old + added - removed, NULL when big reaches 0".into()),
        "{:?}",
        p.notes
    );
    assert!(
        p.apply[0].contains("sum(s.amount) FILTER (WHERE s.refreshd_sign > 0 AND s.amount > 10)"),
        "{}",
        p.apply[0]
    );
    // The corpus's filtered view: an expression over two sums.
    let r = no_delta(include_str!("corpus/filtered.sql"), &["l_returnflag"]);
    assert!(
        r.starts_with("column avg_taxed_qty: avg needs")
            || r.starts_with("column untaxed_qty is an expression"),
        "{r}"
    );
}

/// A nullable sum: count(x) tells when the sum becomes NULL; avg is sum / count(x).
#[test]
fn nullable_sum() {
    let sql = "SELECT s.product_id, count(*) AS n, count(s.amount) AS na, sum(s.amount) AS total, \
               avg(s.amount) AS mean FROM tpch.sales s GROUP BY s.product_id";
    let p = plan_with(sql, &["product_id"], &[], &["amount"], &[]).unwrap();
    assert_eq!(
        p.notes,
        [
            "product_id: key (from the delta's group)",
            "n: count, old + added - removed",
            "na: count, old + added - removed",
            "total: sum, old + added - removed, NULL when na reaches 0",
            "mean: avg, total / na",
        ]
    );
}

/// Definitions [`refusals`] checks (SQL, key, the reason; empty: planned on
/// tpch.sales).
const REFUSED: &[(&str, &[&str], &str)] = &[
        (
            "SELECT s.product_id, count(DISTINCT s.sold_on) AS days FROM tpch.sales s GROUP BY s.product_id",
            &["product_id"],
            "column days: count(DISTINCT ...)",
        ),
        (
            "SELECT s.product_id, min(s.amount) AS lo FROM tpch.sales s GROUP BY s.product_id",
            &["product_id"],
            "column lo: min (a delete cannot be undone from the change)",
        ),
        (
            "SELECT s.product_id, sum(s.amount) AS total FROM tpch.sales s GROUP BY s.product_id HAVING count(*) > 1",
            &["product_id"],
            "column total: HAVING decides which groups exist",
        ),
        (
            "SELECT e.e_manager AS manager_id, count(*) AS n FROM tpch.employee e JOIN tpch.employee m ON m.e_id = e.e_manager GROUP BY e.e_manager",
            &["manager_id"],
            "no table can take deltas (employee: it appears 2 times in the definition (deltas of two occurrences in one snapshot count their pairs twice))",
        ),
        (
            "SELECT s.product_id, sum(s.amount) AS total FROM tpch.sales s WHERE s.amount > random() GROUP BY s.product_id",
            &["product_id"],
            "the definition calls random(), whose value changes: a delta computed now would not match the rows counted before",
        ),
        (
            "SELECT s.product_id, count(*) AS n FROM tpch.sales s GROUP BY s.product_id, s.sold_on",
            &["product_id"],
            "",
        ),
];

/// What is refused, with the reason.
#[test]
fn refusals() {
    for (sql, key, want) in REFUSED {
        match plan_with(sql, key, &[], &[], &[]) {
            Err(e) => assert_eq!(&e.reason, want, "{sql}"),
            Ok(p) if want.is_empty() => assert_eq!(p.fact, "tpch.sales"),
            Ok(p) => panic!("{sql}: planned, expected {want}: {p:#?}"),
        }
    }
    // sales on the nullable side of a LEFT JOIN: the deltas go to product, the
    // preserved side (sales changes keep their key capture).
    let p = plan(
        "SELECT p.id, count(s.id) AS n FROM tpch.product p LEFT JOIN tpch.sales s ON s.product_id = p.id GROUP BY p.id",
        &["id"],
    );
    assert_eq!(p.fact, "tpch.product");
    // Grouped by the fact table's primary key, another of its columns in the output.
    let r = no_delta(
        "SELECT s.id, s.amount, count(*) AS n FROM tpch.sales s GROUP BY s.id",
        &["id"],
    );
    assert_eq!(
        r,
        "column amount is not grouped by itself (PostgreSQL accepts it through tpch.sales's primary key, which the consumed rows do not have)"
    );
    // The same through a dimension's key is fine: the dimension is joined as it is.
    let p = plan_with(
        "SELECT p.id, p.name, count(*) AS n FROM tpch.sales s JOIN tpch.product p ON p.id = s.product_id GROUP BY p.id",
        &["id"],
        &[],
        &[],
        &[("sales", 1e6)],
    )
    .unwrap();
    assert_eq!(p.fact, "tpch.sales");
    // A float sum drifts from a recompute.
    let r = plan_with(
        "SELECT s.product_id, sum(s.amount) AS total FROM tpch.sales s GROUP BY s.product_id",
        &["product_id"],
        &[("total", "double precision")],
        &[],
        &[],
    )
    .unwrap_err()
    .reason;
    assert!(
        r.starts_with("column total: sum of type double precision"),
        "{r}"
    );
    // A count or an average kept in another type (a table converted in place whose
    // column was altered): said as such, not as a float sum.
    for (column, ty, why) in [
        ("n", "numeric", "column n: count kept as numeric (deltas add to a count kept as bigint"),
        ("a", "double precision", "column a: avg of type double precision (deltas keep an average exactly only as numeric)"),
    ] {
        let r = plan_with(
            "SELECT s.product_id, count(*) AS n, avg(s.amount) AS a FROM tpch.sales s GROUP BY s.product_id",
            &["product_id"],
            &[(column, ty)],
            &[],
            &[],
        )
        .unwrap_err()
        .reason;
        assert!(r.starts_with(why), "{r}");
    }
    // Read through a plain view.
    let r = no_delta(
        "SELECT o.o_custkey, count(*) AS n, sum(o.o_totalprice) AS t FROM tpch.open_orders o GROUP BY o.o_custkey",
        &["o_custkey"],
    );
    assert!(
        r.contains("orders: it is read through a view or a subquery"),
        "{r}"
    );
}

/// Hostile names stay quoted: a fact table with a `refreshd_sign` column pushes the sign
/// column's name aside; names too long for an identifier are cut and hashed.
#[test]
fn names() {
    let mut cat = catalog();
    cat.add(Relation {
        schema: "tpch".into(),
        name: "Odd \"t\"".into(),
        kind: RelationKind::Table,
        columns: vec!["g".into(), "refreshd_sign".into(), "x".into()],
        types: Vec::new(),
    });
    let sql =
        "SELECT t.g, count(*) AS n, sum(t.x) AS sx FROM tpch.\"Odd \"\"t\"\"\" t GROUP BY t.g";
    let d = derive(sql, &["g"], &cat).unwrap();
    let tables = vec![DeltaTable {
        table: "tpch.Odd \"t\"".into(),
        name: QualifiedName::new("tpch", "Odd \"t\""),
        columns: vec![
            ("g".into(), "text".into()),
            ("refreshd_sign".into(), "int".into()),
            ("x".into(), "numeric".into()),
        ],
        not_null: vec!["x".into()],
        incomparable: vec!["x".into()],
        generated: Vec::new(),
        row_security: false,
        estimated_rows: 10.0,
    }];
    let cols = vec![
        ("g".to_string(), "text".to_string()),
        ("n".to_string(), "bigint".to_string()),
        ("sx".to_string(), "numeric".to_string()),
    ];
    let view = QualifiedName::new("my_schema", "v".repeat(70));
    let p = delta_plan(
        &d,
        &DeltaFacts {
            view: &view,
            live: &view,
            definition: sql,
            columns: &cols,
            equality: &[],
            catalog: &cat,
            tables: &tables,
            fact: None,
        },
    )
    .unwrap();
    assert_eq!(p.sign_column, "refreshd_sign_2");
    assert!(p.buffer.name.len() <= 63 && p.buffer.name.starts_with("my_schema_vvv"));
    assert_ne!(p.buffer.name, p.recheck.name);
    assert!(
        p.install[1].contains("\"refreshd_sign_2\" int2 NOT NULL"),
        "{}",
        p.install[1]
    );
    // x has no equality: an UPDATE buffers all its old and new rows.
    assert!(!p.capture_update.contains("EXCEPT"), "{}", p.capture_update);
}

/// A grouped column whose quoted name holds a `.` is recognised as grouped: a grouping
/// value over it (`lower(t."a.b")`) takes deltas instead of being refused as a column
/// "not grouped by itself".
#[test]
fn grouped_column_with_a_dot_in_its_name() {
    let mut cat = catalog();
    cat.add(Relation {
        schema: "tpch".into(),
        name: "dotted".into(),
        kind: RelationKind::Table,
        columns: vec!["a.b".into(), "x".into()],
        types: Vec::new(),
    });
    let sql = "SELECT t.\"a.b\", lower(t.\"a.b\") AS l, count(*) AS n, sum(t.x) AS sx FROM tpch.dotted t GROUP BY t.\"a.b\"";
    let d = derive(sql, &["a.b"], &cat).unwrap();
    let tables = vec![DeltaTable {
        table: "tpch.dotted".into(),
        name: QualifiedName::new("tpch", "dotted"),
        columns: vec![
            ("a.b".into(), "text".into()),
            ("x".into(), "numeric".into()),
        ],
        not_null: vec!["a.b".into(), "x".into()],
        incomparable: Vec::new(),
        generated: Vec::new(),
        row_security: false,
        estimated_rows: 10.0,
    }];
    let cols = vec![
        ("a.b".to_string(), "text".to_string()),
        ("l".to_string(), "text".to_string()),
        ("n".to_string(), "bigint".to_string()),
        ("sx".to_string(), "numeric".to_string()),
    ];
    let view = QualifiedName::new("tpch", "v");
    let live = QualifiedName::new("tpch", "v_live");
    let p = delta_plan(
        &d,
        &DeltaFacts {
            view: &view,
            live: &live,
            definition: sql,
            columns: &cols,
            equality: &[],
            catalog: &cat,
            tables: &tables,
            fact: None,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.fact, "tpch.dotted");
}
