//! TLS to a real server with `ssl = on` and a certificate made for the test.

mod support;

use std::path::Path;
use std::process::Command;

use refreshd::cli::cluster::{ClusterOptions, TempCluster};
use refreshd::config::Config;
use refreshd::pg::connect::ConnectInfo;
use support::{refreshd, stdout, write_config};

/// A CA and a server certificate for `localhost` / 127.0.0.1 signed by it.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=refreshd test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    // A second CA that did not sign the server certificate.
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "other.key",
        "-out",
        "other.crt",
        "-days",
        "2",
        "-subj",
        "/CN=someone else",
    ]);
}

fn info(dir: &Path, url: &str) -> ConnectInfo {
    let text = format!("[database]\nurl = \"{url}\"\n");
    let path = dir.join("c.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::load(&path).unwrap();
    ConnectInfo::for_refresh(&config.database, dir).unwrap()
}

async fn ssl_in_use(info: &ConnectInfo) -> Result<bool, String> {
    let client = info.connect().await.map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn tls_modes_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let cluster = TempCluster::start(&ClusterOptions {
        tls: Some((dir.path().join("server.crt"), dir.path().join("server.key"))),
        ..Default::default()
    })
    .expect("cluster with ssl = on");
    let port = cluster.port();
    let ca = dir.path().join("ca.crt");
    let other = dir.path().join("other.crt");

    // verify-full: chain and host name checked.
    let i = info(
        dir.path(),
        &format!(
            "postgresql://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
            ca.display()
        ),
    );
    assert_eq!(ssl_in_use(&i).await, Ok(true));

    // verify-full with the wrong CA is refused.
    let i = info(
        dir.path(),
        &format!(
            "postgresql://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
            other.display()
        ),
    );
    let e = ssl_in_use(&i)
        .await
        .expect_err("an unknown CA must be refused");
    assert!(e.contains("TLS") || e.contains("certificate"), "{e}");

    // A host name the certificate does not carry (hostaddr keeps the connection on
    // 127.0.0.1): verify-full refuses, verify-ca accepts.
    let i = info(dir.path(), &format!("host=db.example hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}", ca.display()));
    let e = ssl_in_use(&i)
        .await
        .expect_err("a wrong host name must be refused");
    assert!(e.contains("TLS") || e.contains("certificate"), "{e}");
    let i = info(dir.path(), &format!("host=db.example hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=verify-ca sslrootcert={}", ca.display()));
    assert_eq!(ssl_in_use(&i).await, Ok(true));

    // require: encrypted, certificate not checked (libpq semantics without a root cert).
    let i = info(
        dir.path(),
        &format!("postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=require"),
    );
    assert_eq!(ssl_in_use(&i).await, Ok(true));

    // prefer (the default) uses TLS when the server offers it; disable does not.
    let i = info(
        dir.path(),
        &format!("postgresql://postgres@127.0.0.1:{port}/postgres"),
    );
    assert_eq!(ssl_in_use(&i).await, Ok(true));
    let i = info(
        dir.path(),
        &format!("postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=disable"),
    );
    assert_eq!(ssl_in_use(&i).await, Ok(false));

    the_binary_refreshes_over_verify_full(&cluster, &ca);
}

/// The real binary over verify-full (CA `ca`): `refresh` of a view on `cluster` works.
fn the_binary_refreshes_over_verify_full(cluster: &TempCluster, ca: &Path) {
    let port = cluster.port();
    cluster
        .psql("postgres", &["-c", "CREATE MATERIALIZED VIEW public.tls_mv AS SELECT 1 AS id; CREATE UNIQUE INDEX ON public.tls_mv (id);"])
        .unwrap();
    let (_d, path) = write_config(&format!(
        "[database]\nurl = \"postgresql://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}\"\n[[view]]\nname = \"public.tls_mv\"\nschedule = \"0 * * * *\"\n",
        ca.display()
    ));
    let out = refreshd(&["refresh", "-c", path.to_str().unwrap(), "public.tls_mv"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        support::stderr(&out)
    );
}

#[tokio::test]
async fn require_fails_against_a_server_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TempCluster::start(&ClusterOptions::default()).unwrap();
    let i = info(
        dir.path(),
        &format!(
            "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=require",
            cluster.port()
        ),
    );
    assert!(ssl_in_use(&i).await.is_err());
    let i = info(
        dir.path(),
        &format!(
            "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=prefer",
            cluster.port()
        ),
    );
    assert_eq!(ssl_in_use(&i).await, Ok(false));
}
