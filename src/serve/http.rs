//! The HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status` (GET and HEAD),
//! `POST /refresh`.
//! A plain `match` on method and path; nothing from a path or header reaches SQL: a
//! view in a path is only compared with the configured names.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::pg::ident::QualifiedName;
use crate::serve::health::Role;
use crate::serve::status::{Request as StatusRequest, Shared, WaitOutcome, MAX_VIEW_NAME};

type Resp = Response<BoxBody<Bytes, Infallible>>;

/// A body sent in one piece.
fn full(b: impl Into<Bytes>) -> BoxBody<Bytes, Infallible> {
    Full::new(b.into()).boxed()
}

/// The status page for people (`GET /`): built into the binary, no external resources;
/// it polls `/status` and shows nothing else.
const STATUS_PAGE: &str = include_str!("page.html");

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(full(body.into()))
        .expect("valid response")
}

fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(value.to_string()))
        .expect("valid response")
}

/// At most this many connections are served in full at once (every route, keep-alive).
/// Scrapers and probes need a handful; `?wait=` waiters up to [`MAX_WAITERS`].
pub const MAX_CONNECTIONS: usize = 512;

/// At most this many `POST /refresh/{view}?wait=` requests wait at once; one more is
/// answered 503 with `Retry-After` at once.
pub const MAX_WAITERS: usize = 256;

/// How long a connection may take to send a request head, and how long a kept-alive
/// connection may sit idle between requests: hyper starts this timer again each time
/// it waits for a request head, so one setting bounds both.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The same bound on the overflow path (connections beyond [`MAX_CONNECTIONS`]).
const OVERFLOW_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a stopping server waits for its connections' requests in flight.
const DRAIN: Duration = Duration::from_secs(2);

/// What the handlers share besides [`Shared`].
struct Limits {
    waiters: Arc<tokio::sync::Semaphore>,
}

/// The kernel's queue of connections not yet accepted. The standard library's 128 is
/// overrun by a burst (500 clients at once lost SYNs and waited out a 1 s retransmit);
/// Linux caps this at `net.core.somaxconn` (4096 since 5.4).
const BACKLOG: u32 = 4096;

/// Binds the HTTP listener, with [`BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restart can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves until `stop` is cancelled, then waits (at most [`DRAIN`]) for the requests
/// in flight. Each connection is a task of the server's own set; a panic in a handler
/// is answered 500 and counted, one elsewhere in a connection's task ends only that
/// connection (and is counted).
///
/// Every connection is accepted at once (a full server never leaves clients in the
/// kernel's queue to be reset). A connection takes one of [`MAX_CONNECTIONS`] slots if
/// one is free and is then served in full. Otherwise it is served on the overflow path,
/// which needs no slot: it waits at most [`OVERFLOW_TIMEOUT`] for one request, answers
/// `/healthz` and `/readyz` as usual and anything else with 503, `Retry-After` and
/// `Connection: close`. So no client — idle sockets, waiters, slow scrapers — can take
/// the capacity probes need, and excess clients get an answer instead of a reset.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let limits = Arc::new(Limits {
        waiters: Arc::new(tokio::sync::Semaphore::new(MAX_WAITERS)),
    });
    let mut overflow = Overflow::default();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                connection_ended(ended, &shared);
                continue;
            }
            a = listener.accept() => a,
        };
        crate::engine::tasks::fault("http_accept");
        let (stream, _peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, typically: nothing to do but wait.
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = slots.clone().try_acquire_owned().ok();
        if permit.is_none() {
            overflow.note();
        }
        connections.spawn(connection(
            stream,
            permit,
            shared.clone(),
            limits.clone(),
            stop.clone(),
        ));
    }
    drain(connections, &shared).await;
}

/// Connections served on the overflow path, logged at most once a minute with the
/// count since the last line.
#[derive(Default)]
struct Overflow {
    overflowed: u64,
    last_warned: Option<std::time::Instant>,
}

impl Overflow {
    /// One more connection found every slot taken.
    fn note(&mut self) {
        self.overflowed += 1;
        if self
            .last_warned
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(
                max_connections = MAX_CONNECTIONS,
                overflow_connections = self.overflowed,
                "http: every connection slot is taken; probes are still answered, other requests get 503"
            );
            self.last_warned = Some(std::time::Instant::now());
            self.overflowed = 0;
        }
    }
}

/// One connection's task: served in full with a slot (`permit`), else on the
/// overflow path (one request, probes answered, anything else 503); see [`serve`].
async fn connection(
    stream: TcpStream,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    shared: Arc<Shared>,
    limits: Arc<Limits>,
    stop: CancellationToken,
) {
    let io = TokioIo::new(stream);
    let mut builder = http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new());
    match permit {
        Some(_permit) => {
            builder.header_read_timeout(IDLE_TIMEOUT);
            let service = service_fn(move |req| {
                let shared = shared.clone();
                let limits = limits.clone();
                async move {
                    let answer = handle(req, &shared, &limits);
                    Ok::<_, Infallible>(guarded(answer, &shared).await)
                }
            });
            drive(builder.serve_connection(io, service), &stop).await;
        }
        None => {
            builder
                .header_read_timeout(OVERFLOW_TIMEOUT)
                .keep_alive(false);
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move {
                    let answer = async { overflow(&req, &shared) };
                    Ok::<_, Infallible>(guarded(answer, &shared).await)
                }
            });
            drive(builder.serve_connection(io, service), &stop).await;
        }
    }
}

/// At shutdown: waits at most [`DRAIN`] for the connections' requests in flight (a
/// panic among them counted as usual); those still running are dropped.
async fn drain(mut connections: tokio::task::JoinSet<()>, shared: &Shared) {
    let drained = tokio::time::timeout(DRAIN, async {
        while let Some(ended) = connections.join_next().await {
            connection_ended(ended, shared);
        }
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            connections = connections.len(),
            "http: requests still in flight at shutdown are dropped"
        );
    }
}

/// A connection's task ended: a panic there (outside a handler) is logged and counted.
fn connection_ended(ended: Result<(), tokio::task::JoinError>, shared: &Shared) {
    if let Err(e) = ended {
        if e.is_panic() {
            let message = crate::engine::tasks::join_error_message(e);
            crate::engine::tasks::panicked(&shared.metrics, "http", &message);
        }
    }
}

/// A handler's answer, or 500 if it panics (logged and counted): one request's bug
/// never takes the server, or even the connection, down.
async fn guarded(answer: impl std::future::Future<Output = Resp>, shared: &Shared) -> Resp {
    use futures_util::FutureExt as _;
    // AssertUnwindSafe: handlers share only atomics, channels and locks that a panic
    // leaves consistent (a poisoned lock is a panic of its own, answered the same way).
    match std::panic::AssertUnwindSafe(answer).catch_unwind().await {
        Ok(r) => r,
        Err(payload) => {
            let message = crate::engine::tasks::panic_message(payload.as_ref());
            crate::engine::tasks::panicked(&shared.metrics, "http", &message);
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error (a bug in refreshd; it is logged)\n",
            )
        }
    }
}

/// Serves one connection to its end, or until `stop` (then lets the request in flight
/// finish).
async fn drive<S>(conn: http1::Connection<TokioIo<TcpStream>, S>, stop: &CancellationToken)
where
    S: hyper::service::HttpService<Incoming, ResBody = BoxBody<Bytes, Infallible>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
}

/// 503 with `Retry-After`, closing the connection.
fn busy(what: &str) -> Resp {
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header("content-type", "text/plain; charset=utf-8")
        .header("retry-after", "1")
        .header("connection", "close")
        .body(full(format!("busy: {what}; retry in a second\n")))
        .expect("valid response")
}

/// The overflow path: probes answered, everything else turned away at once.
fn overflow(req: &Request<Incoming>, shared: &Shared) -> Resp {
    probe(req.method(), req.uri().path(), shared).unwrap_or_else(|| busy("too many connections"))
}

/// `/healthz` and `/readyz`: atomics only, never a wait.
fn probe(method: &Method, path: &str, shared: &Shared) -> Option<Resp> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    match path {
        "/healthz" => Some(if shared.health.alive() {
            text(StatusCode::OK, "ok\n")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "a loop is stuck\n")
        }),
        "/readyz" => Some(if shared.health.ready() {
            text(StatusCode::OK, "ready\n")
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no proven LISTEN session yet\n",
            )
        }),
        _ => None,
    }
}

/// The longest `?wait=` a request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// `wait=DURATION` from a query string: `Ok(None)` when absent.
fn wait_param(query: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(q) = query else { return Ok(None) };
    let mut wait = None;
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "wait" => {
                let v = percent_decode(v).ok_or("wait: not valid percent-encoding")?;
                let d = humantime::parse_duration(v.trim())
                    .map_err(|_| "wait: not a duration such as 5s or 500ms".to_string())?;
                if d > MAX_WAIT {
                    return Err(format!(
                        "wait: at most {}",
                        humantime::format_duration(MAX_WAIT)
                    ));
                }
                wait = Some(d);
            }
            _ => return Err("unknown query parameter (only wait is accepted)".into()),
        }
    }
    Ok(wait)
}

/// Read-your-writes: forces `view` and answers when a refresh of it that started after
/// this request arrived has ended.
async fn wait_for_refresh(shared: &Shared, view: QualifiedName, wait: Duration) -> Resp {
    let arrived = std::time::Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = view.to_string();
    let request = StatusRequest::Wait {
        view,
        arrived,
        reply: tx,
    };
    if shared.requests.send(request).is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let relayed = shared.health.role() != Role::Leader;
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(WaitOutcome::Refreshed {
            end,
            duration_seconds,
        })) => json(
            StatusCode::OK,
            &serde_json::json!({"view": name, "outcome": "success", "end": end,
                "duration_seconds": duration_seconds, "relayed": relayed}),
        ),
        Ok(Ok(WaitOutcome::Failed(e))) => json(
            StatusCode::BAD_GATEWAY,
            &serde_json::json!({"view": name, "outcome": "failure", "error": e}),
        ),
        // The core dropped the request: the view left the configuration.
        Ok(Err(_)) => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "unknown view"}),
        ),
        Err(_) => json(
            StatusCode::GATEWAY_TIMEOUT,
            &serde_json::json!({"view": name, "error": format!("no refresh of the view committed within {}", humantime::format_duration(wait))}),
        ),
    }
}

/// Compares in time independent of where the strings differ (`subtle`).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

fn authorized(req: &Request<Incoming>, shared: &Shared) -> bool {
    let token = shared.admin_token.read().expect("not poisoned");
    let Some(token) = token.as_deref() else {
        return true;
    };
    let Some(given) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 section 11.1).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
    else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

fn percent_decode(s: &str) -> Option<String> {
    crate::percent::decode(s)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Standby => "standby",
        Role::Disconnected => "disconnected",
    }
}

/// How long a scrape waits for the core loop's snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

async fn handle(req: Request<Incoming>, shared: &Shared, limits: &Limits) -> Resp {
    let path = req.uri().path().to_string();
    // HEAD is answered as GET: hyper sends the head (status, headers) and never the
    // body of a response to HEAD.
    let method = if req.method() == Method::HEAD {
        Method::GET
    } else {
        req.method().clone()
    };
    match (&method, path.as_str()) {
        (&Method::GET, "/") => page(),
        (&Method::GET, "/metrics") => metrics(shared).await,
        (&Method::GET, "/healthz" | "/readyz") => {
            probe(req.method(), &path, shared).expect("a probe route")
        }
        (&Method::GET, "/status") => status(shared).await,
        (&Method::POST, p) if p == "/refresh" || p.starts_with("/refresh/") => {
            if !authorized(&req, shared) {
                return Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header("www-authenticate", "Bearer")
                    .body(full("missing or wrong bearer token\n"))
                    .expect("valid response");
            }
            refresh(shared, limits, p, req.uri().query()).await
        }
        (_, "/" | "/metrics" | "/healthz" | "/readyz" | "/status") => {
            not_allowed("GET, HEAD", "use GET\n")
        }
        (_, p) if p == "/refresh" || p.starts_with("/refresh/") => {
            not_allowed("POST", "use POST\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// 405 with the `Allow` header RFC 9110 asks for.
fn not_allowed(allow: &'static str, body: &'static str) -> Resp {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, body);
    r.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static(allow),
    );
    r
}

/// `GET /`: the status page.
fn page() -> Resp {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/html; charset=utf-8")
        // The page loads nothing from elsewhere; say so to the browser too.
        .header(
            "content-security-policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
        )
        .header("cache-control", "no-cache")
        .body(full(Bytes::from_static(STATUS_PAGE.as_bytes())))
        .expect("valid response")
}

/// Views written per chunk of `/metrics`.
const METRICS_CHUNK_VIEWS: usize = 256;

/// The exposition: the registry's few series at once, then the per-view families chunk
/// by chunk as the client reads them (a snapshot taken now), so memory does not grow
/// with a 10,000-view scrape.
fn metrics_body(m: &crate::serve::metrics::Metrics) -> BoxBody<Bytes, Infallible> {
    let head = m.render_registry();
    let rest = Arc::new(m.views.snapshot()).chunks(METRICS_CHUNK_VIEWS);
    let frames = std::iter::once(head)
        .chain(rest)
        .map(|s| Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(s))));
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

/// `GET /metrics`.
async fn metrics(shared: &Shared) -> Resp {
    // Ages are computed at scrape time; a core too busy to answer leaves the last
    // values (its stall shows in /healthz).
    if let Some(ages) = shared.pending_ages(SNAPSHOT_WAIT).await {
        for (view, age) in &ages {
            shared.metrics.views.set_pending(view, *age);
        }
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        .body(metrics_body(&shared.metrics))
        .expect("valid response")
}

/// `GET /status` before the core loop runs (the startup checks wait for the database):
/// 503 with what a reader can know, every configured view's state unknown, so that
/// `refreshd status` says "starting" (exit 1) rather than "unreachable" (exit 2).
fn starting(shared: &Shared) -> Resp {
    let config = shared.config();
    let views: Vec<serde_json::Value> = config
        .views
        .iter()
        .map(|v| serde_json::json!({"view": v.name.to_string(), "state": "unknown"}))
        .collect();
    let body = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "role": "starting",
        "ready": false,
        "detail": "waiting for the database for the startup checks (the log says why)",
        "views": views,
    });
    Response::builder()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .expect("valid response")
}

/// `GET /status`.
async fn status(shared: &Shared) -> Resp {
    crate::engine::tasks::fault("http");
    if !shared
        .core_started
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return starting(shared);
    }
    let Some(snap) = shared.snapshot(SNAPSHOT_WAIT).await else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the core loop did not answer (shutting down?)\n",
        );
    };
    // Serialized straight from the snapshot: a `serde_json::Value` of 10,000 views
    // would be tens of megabytes of short-lived allocations.
    #[derive(serde::Serialize)]
    struct Body<'a> {
        version: &'a str,
        role: &'a str,
        ready: bool,
        views: &'a [crate::serve::status::ViewStatus],
    }
    let body = Body {
        version: crate::VERSION,
        role: role_name(shared.health.role()),
        ready: shared.health.ready(),
        views: &snap.views,
    };
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(full(serde_json::to_vec(&body).expect("status serializes")))
        .expect("valid response")
}

/// `POST /refresh[/{view}][?wait=D]`, authorized.
async fn refresh(shared: &Shared, limits: &Limits, path: &str, query: Option<&str>) -> Resp {
    let target = match path.strip_prefix("/refresh/") {
        None => None,
        Some(raw) => {
            let config = shared.config();
            let found = percent_decode(raw)
                .filter(|d| d.len() <= MAX_VIEW_NAME)
                .and_then(|d| QualifiedName::parse(&d).ok())
                .and_then(|n| config.view(&n).map(|v| v.name.clone()));
            match found {
                Some(n) => Some(n),
                None => {
                    return json(
                        StatusCode::NOT_FOUND,
                        &serde_json::json!({"error": "unknown view"}),
                    )
                }
            }
        }
    };
    match wait_param(query) {
        Ok(None) => {}
        Ok(Some(wait)) => {
            let Some(view) = target else {
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "wait needs a view: POST /refresh/{schema.view}?wait=5s"}),
                );
            };
            // Each waiter holds a connection and a place in the core's wait list.
            let Ok(_waiting) = limits.waiters.try_acquire() else {
                return busy(&format!(
                    "{MAX_WAITERS} requests already wait for a refresh"
                ));
            };
            return wait_for_refresh(shared, view, wait).await;
        }
        Err(e) => return json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": e})),
    }
    let queued = target
        .as_ref()
        .map_or_else(|| "*".to_string(), |n| n.to_string());
    // The core relays what a standby receives to the leader.
    let leader = shared.health.role() == Role::Leader;
    let request = StatusRequest::Force {
        view: target,
        source: "http",
    };
    if shared.requests.send(request).is_err() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    json(
        StatusCode::ACCEPTED,
        &serde_json::json!({"queued": queued, "leader": leader, "relayed": !leader}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_paths() {
        assert_eq!(percent_decode("public.v").as_deref(), Some("public.v"));
        assert_eq!(
            percent_decode("%22Sales%22.%22Daily%20Totals%22").as_deref(),
            Some(r#""Sales"."Daily Totals""#)
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%+1"), None);
    }

    #[test]
    fn wait_parameter() {
        assert_eq!(wait_param(None), Ok(None));
        assert_eq!(
            wait_param(Some("wait=5s")),
            Ok(Some(Duration::from_secs(5)))
        );
        assert_eq!(
            wait_param(Some("wait=250ms")),
            Ok(Some(Duration::from_millis(250)))
        );
        assert!(wait_param(Some("wait=61s")).is_err());
        assert!(wait_param(Some("wait=soon")).is_err());
        assert!(wait_param(Some("other=1")).is_err());
    }

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
