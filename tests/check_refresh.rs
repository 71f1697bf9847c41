//! `refreshd check` and `refreshd refresh` against a real PostgreSQL.

mod support;

use std::time::{Duration, Instant};

use support::{refreshd, stderr, stdout, write_config, TestDb};

/// A schema with every situation `check` must recognise. refreshd connects as `app`,
/// which owns everything but `not_mine`.
fn setup(db: &TestDb) -> String {
    let app = format!("{}_app", db.name);
    let other = format!("{}_other", db.name);
    db.psql(&format!(
        r#"
        CREATE ROLE {app} LOGIN; CREATE ROLE {other};
        GRANT CREATE ON DATABASE {db} TO {app}; GRANT CREATE ON SCHEMA public TO {app};
        SET ROLE {app};
        CREATE TABLE public.orders (id int PRIMARY KEY, amount int NOT NULL);
        INSERT INTO public.orders SELECT g, g * 10 FROM generate_series(1, 100) g;
        CREATE FUNCTION public.notify_orders() RETURNS trigger LANGUAGE plpgsql AS
          $$BEGIN PERFORM pg_notify('orders_changed', ''); RETURN NULL; END$$;
        CREATE TRIGGER orders_notify AFTER INSERT OR UPDATE OR DELETE ON public.orders
          FOR EACH STATEMENT EXECUTE FUNCTION public.notify_orders();
        CREATE MATERIALIZED VIEW public.order_totals AS
          SELECT id % 3 AS bucket, sum(amount) AS total FROM public.orders GROUP BY 1;
        CREATE UNIQUE INDEX ON public.order_totals (bucket);
        CREATE SCHEMA "Sales";
        CREATE MATERIALIZED VIEW "Sales"."Daily Totals" AS SELECT id, amount FROM public.orders;
        CREATE UNIQUE INDEX ON "Sales"."Daily Totals" (id);
        CREATE MATERIALIZED VIEW public.later AS SELECT id FROM public.orders WITH NO DATA;
        CREATE UNIQUE INDEX ON public.later (id);
        CREATE MATERIALIZED VIEW public.no_key AS SELECT id FROM public.orders;
        CREATE UNIQUE INDEX ON public.no_key ((id + 1));
        CREATE UNIQUE INDEX ON public.no_key (id) WHERE id > 0;
        CREATE MATERIALIZED VIEW public.not_mine AS SELECT id FROM public.orders;
        CREATE UNIQUE INDEX ON public.not_mine (id);
        RESET ROLE;
        ALTER MATERIALIZED VIEW public.not_mine OWNER TO {other};
        GRANT SELECT ON public.orders TO {other};
        "#,
        db = db.name
    ));
    app
}

fn config(db: &TestDb, app: &str, extra: &str) -> String {
    format!(
        "[database]\nurl = \"{}\"\n[defaults]\nlock_timeout = \"1s\"\n{extra}",
        db.dsn_as(app)
    )
}

const ALL_VIEWS: &str = r#"
[[view]]
name = "public.order_totals"
channels = ["orders_changed"]
[[view]]
name = '"Sales"."Daily Totals"'
schedule = "*/5 * * * *"
[[view]]
name = "public.later"
channels = ["orders_changed"]
[[view]]
name = "public.no_key"
channels = ["orders_changed"]
[[view]]
name = "public.not_mine"
channels = ["orders_changed"]
[[view]]
name = "public.missing"
channels = ["orders_changed"]
"#;

fn line_for<'a>(out: &'a str, view: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(&format!(" {view}:")))
        .unwrap_or_else(|| panic!("no line for {view} in:\n{out}"))
}

#[test]
fn check_reports_each_view() {
    let db = TestDb::new();
    let app = setup(&db);
    let (_d, path) = write_config(&config(&db, &app, ALL_VIEWS));
    let out = refreshd(&["check", "-c", path.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));

    let l = line_for(&text, "public.order_totals");
    assert!(l.starts_with("OK"), "{l}");
    assert!(l.contains("unique index") && l.contains("(bucket)"), "{l}");
    assert!(
        l.contains("fed by orders_changed via 1 trigger(s) on public.orders"),
        "{l}"
    );

    let l = line_for(&text, r#""Sales"."Daily Totals""#);
    assert!(l.starts_with("OK"), "{l}");
    assert!(l.contains("schedule"), "{l}");

    let l = line_for(&text, "public.later");
    assert!(l.starts_with("WARN") && l.contains("not populated"), "{l}");

    let l = line_for(&text, "public.no_key");
    assert!(l.starts_with("FAIL") && l.contains("unique"), "{l}");

    let l = line_for(&text, "public.not_mine");
    assert!(
        l.starts_with("FAIL") && l.contains("may not refresh"),
        "{l}"
    );

    let l = line_for(&text, "public.missing");
    assert!(l.starts_with("FAIL") && l.contains("does not exist"), "{l}");

    assert!(
        text.contains("6 view(s): 2 ok, 1 with warnings, 3 with problems"),
        "{text}"
    );
}

#[test]
fn check_passes_when_all_is_well_and_flags_unfed_views() {
    let db = TestDb::new();
    let app = setup(&db);
    let good = "[[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\n\
                [[view]]\nname = \"public.no_key\"\nconcurrently = false\nschedule = \"0 * * * * *\"\n";
    let (_d, path) = write_config(&config(&db, &app, good));
    let out = refreshd(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    // No channel and no schedule: nothing feeds the view.
    let unfed = "[[view]]\nname = \"public.order_totals\"\n";
    let (_d, path) = write_config(&config(&db, &app, unfed));
    let out = refreshd(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let l = line_for(&stdout(&out), "public.order_totals").to_string();
    assert!(
        l.starts_with("FAIL") && l.contains("nothing feeds it"),
        "{l}"
    );
}

/// A common design (SPEC, `check`): no trigger, the application NOTIFYs the view's
/// channel itself after its writes. That is a warning, not a problem.
#[test]
fn check_warns_on_a_view_fed_by_the_applications_own_notify() {
    let db = TestDb::new();
    let app = setup(&db);
    db.psql(&format!(
        "SET ROLE {app}; CREATE TABLE public.events (id int PRIMARY KEY); \
         CREATE MATERIALIZED VIEW public.event_count AS SELECT 1 AS k, count(*) AS n FROM public.events; \
         CREATE UNIQUE INDEX ON public.event_count (k);"
    ));
    let cfg = "[[view]]\nname = \"public.event_count\"\nchannels = [\"events_changed\"]\n";
    let (_d, path) = write_config(&config(&db, &app, cfg));
    let out = refreshd(&["check", "-c", path.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let l = line_for(&text, "public.event_count");
    assert!(l.starts_with("WARN"), "{l}");
    assert!(
        l.contains("channel events_changed: no trigger") && l.contains("application"),
        "{l}"
    );
    assert!(!l.contains("PROBLEM"), "{l}");
    assert!(
        text.contains("1 view(s): 0 ok, 1 with warnings, 0 with problems"),
        "{text}"
    );
}

#[test]
fn check_cannot_connect_exits_1() {
    let (_d, path) = write_config(
        "[database]\nurl = \"postgresql://nobody:hunter2@127.0.0.1:1/x\"\nconnect_timeout = \"1s\"\n[[view]]\nname = \"public.v\"\n",
    );
    let out = refreshd(&["check", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("cannot connect"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn refresh_quoted_and_unpopulated_views() {
    let db = TestDb::new();
    let app = setup(&db);
    let (_d, path) = write_config(&config(&db, &app, ALL_VIEWS));
    let p = path.to_str().unwrap();

    db.psql("INSERT INTO public.orders VALUES (1000, 5)");
    let out = refreshd(&[
        "refresh",
        "-c",
        p,
        r#""Sales"."Daily Totals""#,
        "public.later",
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(
        text.contains(r#""Sales"."Daily Totals": refreshed (concurrently) in "#),
        "{text}"
    );
    assert!(
        text.contains("public.later: refreshed (populate) in "),
        "{text}"
    );
    assert_eq!(
        db.psql(r#"SELECT amount FROM "Sales"."Daily Totals" WHERE id = 1000"#),
        "5"
    );
    assert_eq!(
        db.psql("SELECT relispopulated FROM pg_class WHERE oid = 'public.later'::regclass"),
        "t"
    );
    assert_eq!(db.psql("SELECT count(*) FROM public.later"), "101");

    // Once populated, the next refresh is concurrent.
    let out = refreshd(&["refresh", "-c", p, "public.later"]);
    assert!(
        stdout(&out).contains("public.later: refreshed (concurrently)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn refresh_failures_say_why_and_exit_1() {
    let db = TestDb::new();
    let app = setup(&db);
    let (_d, path) = write_config(&config(&db, &app, ALL_VIEWS));
    let p = path.to_str().unwrap();

    let out = refreshd(&["refresh", "-c", p, "public.no_key"]);
    assert_eq!(out.status.code(), Some(1));
    let t = stdout(&out);
    assert!(
        t.contains("public.no_key: FAILED") && t.contains("unique index"),
        "{t}"
    );
    assert!(t.contains("SQLSTATE 55000"), "{t}");

    let out = refreshd(&["refresh", "-c", p, "public.not_mine"]);
    assert_eq!(out.status.code(), Some(1));
    let t = stdout(&out);
    assert!(
        // PostgreSQL 13-16 say "must be owner"; 17+ (the MAINTAIN privilege) say
        // "permission denied for materialized view".
        (t.contains("must be owner") || t.contains("permission denied for materialized view"))
            && t.contains("42501")
            && t.contains("MAINTAIN"),
        "{t}"
    );

    let out = refreshd(&["refresh", "-c", p, "public.nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown view public.nope"),
        "{}",
        stderr(&out)
    );

    // --all goes on past failures: the good views are refreshed, the exit code says
    // something failed.
    db.psql("INSERT INTO public.orders VALUES (2000, 7)");
    let out = refreshd(&["refresh", "-c", p, "--all"]);
    assert_eq!(out.status.code(), Some(1));
    let t = stdout(&out);
    assert!(t.contains("public.order_totals: refreshed"), "{t}");
    assert!(t.contains("public.missing: FAILED"), "{t}");
    assert_eq!(
        db.psql(r#"SELECT amount FROM "Sales"."Daily Totals" WHERE id = 2000"#),
        "7"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_gives_up_on_lock_timeout() {
    let db = TestDb::new();
    let app = setup(&db);
    let (_d, path) = write_config(&config(&db, &app, ALL_VIEWS));
    let p = path.to_str().unwrap().to_string();

    let mut holder = db.client().await;
    let tx = holder.transaction().await.unwrap();
    // Materialized views cannot be LOCKed; a REFRESH in an open transaction holds
    // ACCESS EXCLUSIVE until it ends, like a manual refresh someone forgot to commit.
    tx.batch_execute("REFRESH MATERIALIZED VIEW public.order_totals")
        .await
        .unwrap();

    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        refreshd(&["refresh", "-c", &p, "public.order_totals"])
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let t = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("lock timeout") && t.contains("55P03"), "{t}");
    // lock_timeout is 1s; the whole command must end within it plus a second.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    tx.rollback().await.unwrap();
}

/// What `check` says depends on the server's version: on 17+ it names the functions a
/// view calls without their own `SET search_path` (REFRESH runs them with a safe
/// search_path there); on 13/14 it warns that statistics detection rides the lossy
/// statistics collector.
#[test]
fn check_warns_about_what_differs_between_versions() {
    let db = TestDb::new();
    let version: i32 = db.psql("SHOW server_version_num").parse().unwrap();
    db.psql(
        r#"
        CREATE TABLE public.facts (k int PRIMARY KEY, v int);
        INSERT INTO public.facts VALUES (1, 1);
        CREATE FUNCTION public.doubled(x int) RETURNS int LANGUAGE plpgsql AS
          $$BEGIN RETURN x * (SELECT count(*) FROM facts)::int; END$$;
        CREATE FUNCTION public.pinned(x int) RETURNS int LANGUAGE plpgsql SET search_path = public AS
          $$BEGIN RETURN x + (SELECT count(*) FROM facts)::int; END$$;
        -- WITH NO DATA: on 17+ even creating it would run doubled() with the safe
        -- search_path and fail, which is the point of the warning.
        CREATE MATERIALIZED VIEW public.uses_functions AS
          SELECT k, public.doubled(v) AS d, public.pinned(v) AS p FROM public.facts WITH NO DATA;
        CREATE UNIQUE INDEX ON public.uses_functions (k);
        CREATE MATERIALIZED VIEW public.watched AS SELECT k, v FROM public.facts;
        CREATE UNIQUE INDEX ON public.watched (k);
        "#,
    );
    let (_d, path) = write_config(&format!(
        "[database]\nurl = \"{}\"\n\
         [[view]]\nname = \"public.uses_functions\"\nschedule = \"0 0 * * * *\"\n\
         [[view]]\nname = \"public.watched\"\ndetect = \"statistics\"\n",
        db.dsn()
    ));
    let out = refreshd(&["check", "-c", path.to_str().unwrap()]);
    let text = stdout(&out);
    let line = |view: &str| {
        text.lines()
            .find(|l| l.contains(&format!(" {view}: ")))
            .unwrap_or_else(|| panic!("no line for {view}:\n{text}"))
            .to_string()
    };
    let functions = line("public.uses_functions");
    if version >= 170000 {
        assert!(
            functions.contains("without SET search_path: doubled(integer)")
                && !functions.contains("pinned"),
            "{text}"
        );
    } else {
        assert!(!functions.contains("search_path"), "{text}");
    }
    let watched = line("public.watched");
    assert_eq!(
        watched.contains("statistics collector"),
        version < 150000,
        "{text}"
    );
    assert_ne!(out.status.code(), Some(2), "{text}");
}

/// PostgreSQL 17+: a role granted MAINTAIN on a view it does not own may refresh it;
/// `check` and `init` accept it, and `refresh` succeeds. Before 17 the same role is
/// refused (only owners may refresh), and `init` lists the view as not served.
#[test]
fn maintain_lets_a_non_owner_refresh_on_17_and_later() {
    let db = TestDb::new();
    let version: i32 = db.psql("SHOW server_version_num").parse().unwrap();
    let role = format!("maint_{}", db.name.rsplit('_').next().unwrap());
    db.psql(&format!(
        "CREATE ROLE {role} LOGIN; \
         CREATE TABLE public.base (k int PRIMARY KEY); INSERT INTO public.base VALUES (1); \
         CREATE MATERIALIZED VIEW public.owned_by_admin AS SELECT k FROM public.base; \
         CREATE UNIQUE INDEX ON public.owned_by_admin (k); \
         GRANT CONNECT ON DATABASE {} TO {role}; GRANT USAGE ON SCHEMA public TO {role}; \
         GRANT SELECT ON public.base, public.owned_by_admin TO {role};",
        db.name
    ));
    if version >= 170000 {
        db.psql(&format!(
            "GRANT MAINTAIN ON public.owned_by_admin TO {role}"
        ));
    }
    let (_d, path) = write_config(&format!(
        "[database]\nurl = \"{}\"\n[[view]]\nname = \"public.owned_by_admin\"\nschedule = \"0 0 * * * *\"\n",
        db.dsn_as(&role)
    ));
    let p = path.to_str().unwrap();
    let check = refreshd(&["check", "-c", p]);
    let refresh = refreshd(&["refresh", "-c", p, "public.owned_by_admin"]);
    let init = refreshd(&["init", "--url", &db.dsn_as(&role)]);
    let init_text = stdout(&init);
    if version >= 170000 {
        assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));
        assert_eq!(refresh.status.code(), Some(0), "{}", stdout(&refresh));
        assert!(!init_text.contains("NOT SERVED"), "{init_text}");
    } else {
        assert_eq!(check.status.code(), Some(1), "{}", stdout(&check));
        assert_eq!(refresh.status.code(), Some(1), "{}", stdout(&refresh));
        assert!(
            init_text.contains("# NOT SERVED: public.owned_by_admin"),
            "{init_text}"
        );
    }
    db.psql(&format!(
        "REVOKE ALL ON public.base, public.owned_by_admin FROM {role}; \
         REVOKE ALL ON SCHEMA public FROM {role}; REVOKE ALL ON DATABASE {} FROM {role}; \
         DROP ROLE {role}",
        db.name
    ));
}
