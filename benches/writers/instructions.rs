//! `--writers-instructions`: what each capture costs a single-row INSERT transaction,
//! in CPU instructions counted by valgrind's callgrind — a count that does not move
//! with the load of a shared 2-core machine, where pgbench's transactions per second
//! spread by ±20 % from one run to the next.
//!
//! The schema and the `init --keyed` capture are `--writers`' (w.sales, the key-buffer
//! and row-buffer views). Per variant, with the server stopped, the harness runs
//! `postgres --single` under callgrind twice on the same input: the variant's triggers,
//! a warm-up of 200 INSERT transactions, then 0 or N more; the difference, divided by
//! N, is what one transaction costs: parse, plan, execute, the trigger, commit. No
//! client, network or concurrency: a CPU-only bound on what capture takes from writers
//! (contention at 8 clients comes on top). Between variants the inserted rows are
//! deleted and the buffers emptied, outside the measured runs.

use std::path::Path;

use super::*;

/// A variant's triggers on w.sales: none, init's, or a diagnostic created here.
struct Variant {
    label: &'static str,
    triggers: Vec<String>,
}

/// Diagnostic trigger functions: an empty one and a plain copy of the inserted rows.
const DIAGNOSTICS: &str = r#"
CREATE UNLOGGED TABLE w.bench_copy (product int, qty int, amount numeric(12, 2));
CREATE FUNCTION public.bench_empty() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN RETURN NULL; END$$;
CREATE FUNCTION public.bench_copy() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN INSERT INTO w.bench_copy SELECT n.product, n.qty, n.amount FROM new_rows n; RETURN NULL; END$$;
CREATE FUNCTION public.bench_copy_definer() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS
$$BEGIN INSERT INTO w.bench_copy SELECT n.product, n.qty, n.amount FROM new_rows n; RETURN NULL; END$$;
CREATE FUNCTION public.bench_copy_probe() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN INSERT INTO w.bench_copy SELECT n.product, n.qty, n.amount FROM new_rows n;
IF FOUND AND NOT pg_catalog.pg_try_advisory_xact_lock_shared(1919316840 + (pg_catalog.pg_backend_pid() % 16), pg_catalog.hashtext('bench')) THEN PERFORM pg_catalog.pg_notify('bench', ''); END IF;
RETURN NULL; END$$;
CREATE FUNCTION public.bench_row_copy() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN INSERT INTO w.bench_copy VALUES (NEW.product, NEW.qty, NEW.amount); RETURN NULL; END$$;
CREATE FUNCTION public.bench_row_copy_before() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN INSERT INTO w.bench_copy VALUES (NEW.product, NEW.qty, NEW.amount); RETURN NEW; END$$;
"#;

fn diagnostic(function: &str) -> String {
    format!(
        "CREATE TRIGGER bench_diag AFTER INSERT ON w.sales REFERENCING NEW TABLE AS new_rows \
         FOR EACH STATEMENT EXECUTE FUNCTION public.{function}()"
    )
}

pub async fn run(plan: Plan) -> Result<()> {
    let t0 = Instant::now();
    let n = if plan.quick { 300 } else { 2000 };
    let valgrind = which("valgrind")
        .context("--writers-instructions needs valgrind (Debian: apt-get install valgrind)")?;
    let bin_dir = pin_binary()?;
    let mut bench = Bench::on_new_cluster(&plan, 20).await?;
    let c = connect(&bench.dsn).await?;
    c.batch_execute(&setup_sql(plan.writers_partitioned))
        .await?;
    c.batch_execute(DIAGNOSTICS).await?;
    c.batch_execute("VACUUM ANALYZE").await?;
    let init = Init::run(&bin_dir.path().join("refreshd"), &bench.dsn, &c).await?;
    let pg: String = c.query_one("SHOW server_version", &[]).await?.get(0);
    drop(c);
    let of = |v: Var| -> Vec<String> {
        init.defs
            .iter()
            .filter(|(dv, _)| *dv == v)
            .flat_map(|(_, d)| d.clone())
            .collect()
    };
    let variants = vec![
        Variant { label: "(a) no trigger", triggers: vec![] },
        Variant {
            label: "diagnostic: empty plpgsql statement trigger with a transition table",
            triggers: vec![diagnostic("bench_empty")],
        },
        Variant {
            label: "diagnostic: the inserted rows copied into an unlogged table (no lock, no SECURITY DEFINER)",
            triggers: vec![diagnostic("bench_copy")],
        },
        Variant {
            label: "diagnostic: that copy, SECURITY DEFINER",
            triggers: vec![diagnostic("bench_copy_definer")],
        },
        Variant {
            label: "diagnostic: that copy, then the advisory-lock probe",
            triggers: vec![diagnostic("bench_copy_probe")],
        },
        Variant {
            label: "diagnostic: a row-level AFTER INSERT trigger copying NEW",
            triggers: vec!["CREATE TRIGGER bench_diag AFTER INSERT ON w.sales FOR EACH ROW EXECUTE FUNCTION public.bench_row_copy()".into()],
        },
        Variant {
            label: "diagnostic: a row-level BEFORE INSERT trigger copying NEW",
            triggers: vec!["CREATE TRIGGER bench_diag BEFORE INSERT ON w.sales FOR EACH ROW EXECUTE FUNCTION public.bench_row_copy_before()".into()],
        },
        Variant { label: "`init --apply` capture (refreshd.notify_changed)", triggers: of(Var::InitPlain) },
        Variant { label: "`init --keyed` key-buffer capture (w.by_product_keys)", triggers: of(Var::KeyBuffer) },
        Variant { label: "`init --keyed` row-buffer capture (w.by_product_delta)", triggers: of(Var::RowBuffer) },
    ];
    let mut per_tx = Vec::new();
    for v in &variants {
        progress(&format!("instructions: {}", v.label));
        per_tx.push(measure(&mut bench, &valgrind, &v.triggers, n).await?);
    }
    let vg = std::process::Command::new(&valgrind)
        .arg("--version")
        .output()?;
    let mode = if plan.writers_partitioned {
        "--writers-instructions --writers-partitioned"
    } else {
        "--writers-instructions"
    };
    let mut o = run_table_head("Writers in instructions", mode);
    o += &run_row("refreshd", &build_line());
    o += &run_row("PostgreSQL", &pg);
    o += &run_row("counter", String::from_utf8_lossy(&vg.stdout).trim());
    o += &run_row("transactions", &format!("{n} measured per variant (after 200 warm-up), `postgres --single`, one `INSERT INTO {} ... VALUES (...)` each", sales_shape(plan.writers_partitioned)));
    o += &run_row("triggers", &init.triggers_note);
    o += &wall_time_row(t0.elapsed());
    o += "\n| capture on w.sales | instructions per transaction | added by the capture | ratio to (a) |\n|---|---|---|---|\n";
    for (v, i) in variants.iter().zip(&per_tx) {
        o += &format!(
            "| {} | {:.0} | {:+.0} | {:.3} |\n",
            v.label,
            i,
            i - per_tx[0],
            per_tx[0] / i
        );
    }
    print!("{o}");
    Ok(())
}

/// Instructions per INSERT transaction with these triggers on w.sales.
async fn measure(bench: &mut Bench, valgrind: &Path, triggers: &[String], n: usize) -> Result<f64> {
    let without = single_user(bench, valgrind, triggers, 0).await?;
    let with = single_user(bench, valgrind, triggers, n).await?;
    Ok((with - without) as f64 / n as f64)
}

/// One `postgres --single` under callgrind (the server stopped): drop w.sales' triggers,
/// create `triggers`, 200 + `n` INSERT transactions; then, not measured, the rows
/// deleted and the buffers emptied. The instructions callgrind counted.
async fn single_user(
    bench: &mut Bench,
    valgrind: &Path,
    triggers: &[String],
    n: usize,
) -> Result<u64> {
    let partitioned = bench.plan.writers_partitioned;
    let cluster = &mut bench.cluster;
    cluster.stop()?;
    let mut input = String::from(DROP_TRIGGERS);
    for t in triggers {
        input += &format!("{};\n", t.replace('\n', " "));
    }
    for i in 0..200 + n {
        input += &insert_values(partitioned, i);
    }
    let out_file = cluster.scratch_dir().join("callgrind.out");
    let mut cmd = cluster.owner_command(valgrind);
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(cluster.bin_dir().join("postgres"));
    let result = feed(cluster, cmd, &input);
    let total = result.and_then(|()| {
        let text = std::fs::read_to_string(&out_file)?;
        let _ = std::fs::remove_file(&out_file);
        text.lines()
            .find_map(|l| {
                l.strip_prefix("summary: ")
                    .or_else(|| l.strip_prefix("totals: "))
            })
            .and_then(|v| v.trim().parse::<u64>().ok())
            .context("no summary line in callgrind's output")
    });
    let cleanup = format!(
        "{DROP_TRIGGERS}DELETE FROM w.sales WHERE id > {ROWS};\n\
         TRUNCATE w.bench_copy, refreshd.w_by_product_keys_keys, refreshd.w_by_product_delta_delta;\n"
    );
    feed(
        cluster,
        cluster.owner_command(&cluster.bin_dir().join("postgres")),
        &cleanup,
    )?;
    cluster.start_again()?;
    total
}

/// Every trigger on w.sales dropped, in one line (`postgres --single` reads a
/// statement per line).
const DROP_TRIGGERS: &str = "DO $$DECLARE t text; BEGIN FOR t IN SELECT tgname FROM pg_catalog.pg_trigger WHERE tgrelid = 'w.sales'::regclass AND NOT tgisinternal LOOP EXECUTE pg_catalog.format('DROP TRIGGER %I ON w.sales', t); END LOOP; END$$;\n";

/// Runs `cmd` (`postgres` or a wrapper of it) in single-user mode on the cluster's
/// database `postgres`, `input` on stdin; fails on any ERROR it prints.
fn feed(cluster: &TempCluster, mut cmd: std::process::Command, input: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = cmd
        .arg("--single")
        .arg("-D")
        .arg(cluster.data_dir())
        .arg("postgres")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || text.contains("ERROR:") {
        bail!("postgres --single failed: {}", tail(&text, 20));
    }
    Ok(())
}

/// `name` found in PATH.
fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}
