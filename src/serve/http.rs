//! The HTTP server: `/metrics`, `/healthz`, `/readyz`, `/status`, `POST /refresh`.
//! A plain `match` on method and path; nothing from a path or header reaches SQL: a
//! view in a path is only compared with the configured names.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::pg::ident::QualifiedName;
use crate::serve::health::Role;
use crate::serve::status::{Request as StatusRequest, Shared, MAX_VIEW_NAME};

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())))
        .expect("valid response")
}

fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
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

/// Compares in time independent of where the strings differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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
        (&Method::GET, "/metrics") => {
            // Ages are computed at scrape time; a core too busy to answer leaves the
            // last values (its stall shows in /healthz).
            if let Some(snap) = shared.snapshot(SNAPSHOT_WAIT).await {
                for v in &snap.views {
                    shared
                        .metrics
                        .pending_since
                        .with_label_values(&[&v.view])
                        .set(v.pending_since_seconds);
                }
            }
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                .body(Full::new(Bytes::from(shared.metrics.render())))
                .expect("valid response")
        }
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
        (&Method::GET, "/status") => {
            let Some(snap) = shared.snapshot(SNAPSHOT_WAIT).await else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the core loop did not answer (shutting down?)\n",
                );
            };
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "version": crate::VERSION,
                    "role": role_name(shared.health.role()),
                    "ready": shared.health.ready(),
                    "views": snap.views,
                }),
            )
        }
        (&Method::POST, p) if p == "/refresh" || p.starts_with("/refresh/") => {
            if !authorized(&req, shared) {
                return Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .header("www-authenticate", "Bearer")
                    .body(Full::new(Bytes::from("missing or wrong bearer token\n")))
                    .expect("valid response");
            }
            let target = match p.strip_prefix("/refresh/") {
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
        (_, "/metrics" | "/healthz" | "/readyz" | "/status") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        (_, p) if p == "/refresh" || p.starts_with("/refresh/") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
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
    }

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
