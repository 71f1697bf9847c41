//! The HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status`, `POST /refresh`.
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
use tokio::net::TcpListener;
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

/// At most this many HTTP connections are served at once; more wait in the kernel's
/// accept queue. Scrapers and probes need a handful.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("never closed"),
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, _peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(req, &shared).await) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
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

async fn handle(req: Request<Incoming>, shared: &Shared) -> Resp {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/") => page(),
        (&Method::GET, "/metrics") => metrics(shared).await,
        (&Method::GET, "/healthz") => {
            if shared.health.alive() {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "a loop is stuck\n")
            }
        }
        (&Method::GET, "/readyz") => {
            if shared.health.ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: no proven LISTEN session yet\n",
                )
            }
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
            refresh(shared, p, req.uri().query()).await
        }
        (_, "/" | "/metrics" | "/healthz" | "/readyz" | "/status") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        (_, p) if p == "/refresh" || p.starts_with("/refresh/") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
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

/// `GET /status`.
async fn status(shared: &Shared) -> Resp {
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
async fn refresh(shared: &Shared, path: &str, query: Option<&str>) -> Resp {
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
