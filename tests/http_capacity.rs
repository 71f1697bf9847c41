//! The HTTP server under load (issue 17 item 3): idle connections and `?wait=` waiters
//! held open never starve `/healthz`, waiters past the cap are turned away at once with
//! a 503, and no connection is reset.

mod support;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use support::{Daemon, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `MAX_CONNECTIONS` in src/serve/http.rs.
const SLOTS: usize = 512;
/// `MAX_WAITERS` in src/serve/http.rs.
const WAITER_CAP: usize = 256;
/// How long an idle connection is kept (`IDLE_TIMEOUT` in src/serve/http.rs).
const IDLE_BOUND: Duration = Duration::from_secs(10);
const IDLE: usize = 200;
const WAITERS: usize = 500;
/// Each waiter's `?wait=`; the view's refresh takes far longer, so every waiter that
/// gets in is held for all of it.
const WAIT: Duration = Duration::from_secs(8);

/// The tests here load a 2-core machine on purpose and time answers to the second:
/// one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A connection that sends nothing; the server's queue takes it at once (a full queue
/// drops the SYN, and the connect hangs in retransmits).
async fn connect(port: u16) -> TcpStream {
    tokio::time::timeout(
        Duration::from_secs(2),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .expect("connected within 2 s")
    .expect("connect")
}

/// One request with `Connection: close`, read to the end: the status and how long the
/// whole exchange took, from the connect on (a SYN the server's queue dropped costs a
/// 1 s retransmit). An error is returned as it came (a reset shows as
/// `ConnectionReset`).
async fn exchange(port: u16, method: &str, path: &str) -> std::io::Result<(u16, Duration)> {
    let (text, elapsed) = exchange_text(port, method, path).await?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, elapsed))
}

/// Like [`exchange`], with the whole answer as text.
async fn exchange_text(port: u16, method: &str, path: &str) -> std::io::Result<(String, Duration)> {
    let sent = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    Ok((String::from_utf8_lossy(&buf).into_owned(), sent.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_answers_under_idle_connections_and_waiters() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new();
    // A view whose refresh sleeps as long as `knob` says: fast to create and to start,
    // then slow for the waiters.
    db.psql(
        r#"
        CREATE TABLE public.knob (s float8 NOT NULL);
        INSERT INTO public.knob VALUES (0);
        CREATE MATERIALIZED VIEW public.slow AS
            SELECT 1 AS id FROM pg_sleep((SELECT s FROM public.knob));
        CREATE UNIQUE INDEX ON public.slow (id);
        "#,
    );
    let d = Daemon::start(&format!(
        "[database]\nurl = \"{}\"\n[[view]]\nname = \"public.slow\"\nchannels = [\"slow_changed\"]\n",
        db.dsn()
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    db.psql("UPDATE public.knob SET s = 60");
    let port = d.port;

    // 200 connections that never send a byte.
    let idle_opened = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(connect(port).await);
    }

    // 500 read-your-writes waiters at once.
    let path = format!("/refresh/public.slow?wait={}s", WAIT.as_secs());
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move {
                tokio::time::timeout(WAIT * 3, exchange(port, "POST", &path)).await
            })
        })
        .collect();

    probes_answer_within_a_second(port).await;
    every_waiter_is_answered(waiters).await;
    idle_connections_are_closed_not_reset(idle, idle_opened).await;

    // Still serving normally afterwards.
    assert_eq!(d.get("/healthz").0, 200);
}

/// Probes keep being answered, each within 1 s, while all of that is held.
async fn probes_answer_within_a_second(port: u16) {
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let t = Instant::now();
        let probe = tokio::time::timeout(
            Duration::from_secs(1),
            exchange(port, "GET", if i % 5 == 4 { "/readyz" } else { "/healthz" }),
        )
        .await;
        match probe {
            Ok(Ok((200, _))) => {}
            Ok(Ok((code, _))) => panic!("probe {i}: status {code}"),
            Ok(Err(e)) => panic!("probe {i}: {e}"),
            Err(_) => panic!("probe {i}: no answer within 1 s"),
        }
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("slowest probe: {slowest:?}");
}

/// A waiter's task: its exchange within 3 × [`WAIT`].
type Waiter =
    tokio::task::JoinHandle<Result<std::io::Result<(u16, Duration)>, tokio::time::error::Elapsed>>;

/// Every waiter has its answer: 503 at once past the cap, 504 after the whole wait for
/// the others (the refresh sleeps a minute); none reset, none unanswered.
async fn every_waiter_is_answered(waiters: Vec<Waiter>) {
    let mut rejected = Vec::new();
    let mut held = 0;
    for (i, w) in waiters.into_iter().enumerate() {
        match w.await.expect("waiter task") {
            Ok(Ok((503, took))) => rejected.push(took),
            Ok(Ok((504, took))) => {
                assert!(took >= WAIT, "waiter {i}: 504 after {took:?}");
                held += 1;
            }
            Ok(Ok((code, took))) => panic!("waiter {i}: status {code} after {took:?}"),
            Ok(Err(e)) => panic!("waiter {i}: {e} ({:?})", e.kind()),
            Err(_) => panic!("waiter {i}: no answer within {:?}", WAIT * 3),
        }
    }
    let slowest_503 = rejected.iter().max().copied().unwrap_or_default();
    eprintln!(
        "held {held}, rejected {} (slowest 503: {slowest_503:?})",
        rejected.len()
    );
    assert_eq!(held, WAITER_CAP, "waiters held up to the cap");
    assert_eq!(rejected.len(), WAITERS - WAITER_CAP, "the rest turned away");
    assert!(
        slowest_503 < Duration::from_secs(1),
        "503 at once, not after {slowest_503:?}"
    );
}

/// The idle connections are closed by the server once the idle bound has passed: an
/// orderly end of stream, not a reset.
async fn idle_connections_are_closed_not_reset(idle: Vec<TcpStream>, idle_opened: Instant) {
    for (i, mut s) in idle.into_iter().enumerate() {
        let left = (idle_opened + IDLE_BOUND + Duration::from_secs(5))
            .saturating_duration_since(Instant::now());
        let mut byte = [0u8; 1];
        match tokio::time::timeout(left, s.read(&mut byte)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(_)) => {} // an answer such as 408 before closing is fine too
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionReset => {
                panic!("idle connection {i} was reset")
            }
            Ok(Err(e)) => panic!("idle connection {i}: {e}"),
            Err(_) => panic!("idle connection {i} still open after {IDLE_BOUND:?} + 5 s"),
        }
    }
}

/// With every connection slot held by an idle socket, the overflow path still answers
/// the probes as usual and turns anything else away at once with a 503 that says when
/// to come back and closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probes_are_answered_when_every_slot_is_taken() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new();
    db.psql(support::ORDERS_SCHEMA);
    let d = Daemon::start(&format!(
        "[database]\nurl = \"{}\"\n[[view]]\nname = \"public.order_totals\"\nchannels = [\"orders_changed\"]\n",
        db.dsn()
    ));
    d.wait_ready(Duration::from_secs(20)).await;
    let mut idle = Vec::with_capacity(SLOTS + 10);
    for _ in 0..SLOTS + 10 {
        idle.push(connect(d.port).await);
    }
    for i in 0..20 {
        let path = if i % 2 == 0 { "/healthz" } else { "/readyz" };
        let (text, took) =
            tokio::time::timeout(Duration::from_secs(1), exchange_text(d.port, "GET", path))
                .await
                .unwrap_or_else(|_| panic!("{path} {i}: no answer within 1 s"))
                .unwrap_or_else(|e| panic!("{path} {i}: {e}"));
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "{path} {i} after {took:?}: {text}"
        );
    }
    for path in ["/status", "/metrics"] {
        let (text, _) =
            tokio::time::timeout(Duration::from_secs(1), exchange_text(d.port, "GET", path))
                .await
                .unwrap_or_else(|_| panic!("{path}: no answer within 1 s"))
                .unwrap_or_else(|e| panic!("{path}: {e}"));
        let head = text.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 503"), "{path}: {text}");
        assert!(head.contains("\r\nretry-after: "), "{path}: {text}");
        assert!(head.contains("\r\nconnection: close"), "{path}: {text}");
    }
    // Once the idle sockets are gone, the same requests are served in full.
    drop(idle);
    support::wait_for(Duration::from_secs(5), "/status served again", || async {
        matches!(exchange(d.port, "GET", "/status").await, Ok((200, _)))
    })
    .await;
}
