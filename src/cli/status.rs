//! `refreshd status [--url URL]`: one line per view from a running daemon's `/status`.
//! Exit 0 when every view is fine, 1 when one is failing (or retrying) or the daemon is
//! not connected to PostgreSQL or not ready, 2 when the daemon cannot be reached or does
//! not answer like refreshd.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::{EXIT_OK, EXIT_PROBLEMS};
use crate::pg::ident::{escape_display, escape_line};

/// Exit code: the daemon is unreachable.
pub const EXIT_UNREACHABLE: u8 = 2;
/// The default daemon address (SPEC "HTTP").
pub const DEFAULT_URL: &str = "http://127.0.0.1:9648";
const TIMEOUT: Duration = Duration::from_secs(5);
/// A `/status` body larger than this is not refreshd's.
const MAX_BODY: usize = 256 << 20;

/// Runs the command; returns the exit code.
pub async fn run(url: &str) -> u8 {
    let body = match tokio::time::timeout(TIMEOUT, fetch_status(url)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            eprintln!("refreshd status: {url}: {e}");
            return EXIT_UNREACHABLE;
        }
        Err(_) => {
            eprintln!("refreshd status: {url}: no answer within {TIMEOUT:?}");
            return EXIT_UNREACHABLE;
        }
    };
    let status: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("refreshd status: {url}/status is not refreshd's JSON: {e}");
            return EXIT_UNREACHABLE;
        }
    };
    let (text, problem) = render(&status);
    crate::cli::emit(&text);
    if problem {
        EXIT_PROBLEMS
    } else {
        EXIT_OK
    }
}

/// The lines to print, and whether something is wrong: a view failing, or the daemon
/// not connected to PostgreSQL or not ready (then nothing it shows is being kept fresh).
/// Every name is escaped onto its line.
pub fn render(status: &serde_json::Value) -> (String, bool) {
    let role = status["role"].as_str().unwrap_or("?");
    let ready = status["ready"].as_bool() == Some(true);
    let connected = role != "disconnected";
    // A standby refreshes nothing and hears no change: what it knows of a view is not
    // the leader's (a review, 2026-12-05: it said "fresh").
    let standby = role == "standby";
    let mut out = format!(
        "refreshd {} · {}{}\n",
        escape_line(status["version"].as_str().unwrap_or("?")),
        escape_line(role),
        if !connected {
            " from PostgreSQL: nothing is being refreshed; view states are the last known"
        } else if standby {
            ": the leader refreshes the views; ask it (its /status) for their state"
        } else if !ready {
            " (not ready)"
        } else {
            ""
        }
    );
    let empty = Vec::new();
    let views = status["views"].as_array().unwrap_or(&empty);
    let names: Vec<String> = views
        .iter()
        .map(|v| escape_display(v["view"].as_str().unwrap_or("?")).into_owned())
        .collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(4);
    let mut failing = false;
    for (v, name) in views.iter().zip(&names) {
        let state = v["state"].as_str().unwrap_or("?");
        failing |= matches!(state, "failed" | "retrying");
        let stale = v["pending_since_seconds"].as_f64().unwrap_or(0.0);
        let staleness = if stale > 0.0 {
            format!("stale {}", secs(stale))
        } else if connected && ready && !standby {
            "fresh".to_string()
        } else {
            // Without a LISTEN session no change is heard: "fresh" would be a guess.
            "unknown".to_string()
        };
        let last = match v["last_end"].as_str() {
            Some(end) => format!(
                "last {} ({}, {})",
                end,
                v["last_outcome"].as_str().unwrap_or("?"),
                v["last_duration_seconds"].as_f64().map_or("?".into(), secs)
            ),
            None => "never refreshed".to_string(),
        };
        let error = match v["last_error"].as_object() {
            Some(e) => format!(
                "  error {} {}",
                e.get("class").and_then(|c| c.as_str()).unwrap_or("?"),
                e.get("sqlstate").and_then(|c| c.as_str()).unwrap_or("")
            ),
            None => String::new(),
        };
        let line = format!("{name:<width$}  {state:<8}  {staleness:<14}  {last}{error}");
        out.push_str(&escape_line(&line));
        out.push('\n');
    }
    (out, failing || !connected || !ready)
}

fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0}ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.1}s")
    } else {
        format!("{:.0}min", s / 60.0)
    }
}

/// Why `/status` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("only http:// URLs are supported (refreshd serves plain HTTP)")]
    NotHttpUrl,
    #[error("the URL names no host")]
    NoHost,
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// Sending the request or reading the answer failed.
    #[error(transparent)]
    Io(std::io::Error),
    #[error("not an HTTP response")]
    NotHttpResponse,
    /// The status line of an answer other than 200.
    #[error("answered {0:?}")]
    NotOk(String),
    #[error("chunked answers are not expected from refreshd")]
    Chunked,
}

/// GET `{url}/status` over plain HTTP/1.1.
pub async fn fetch_status(url: &str) -> Result<String, FetchError> {
    let rest = url.strip_prefix("http://").ok_or(FetchError::NotHttpUrl)?;
    let (authority, base) = match rest.find('/') {
        // `--url http://host:port/status` names the route itself: asked once.
        Some(i) => {
            let path = rest[i..].trim_end_matches('/');
            (&rest[..i], path.strip_suffix("/status").unwrap_or(path))
        }
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(FetchError::NoHost);
    }
    let addr = if authority
        .rsplit(':')
        .next()
        .is_some_and(|p| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(FetchError::Connect)?;
    let request = format!(
        "GET {base}/status HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(FetchError::Io)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_BODY as u64)
        .read_to_end(&mut raw)
        .await
        .map_err(FetchError::Io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(FetchError::NotHttpResponse)?;
    let status_line = head.lines().next().unwrap_or("");
    // 503 with refreshd's JSON: starting, its startup checks waiting for the database.
    let starting = status_line.contains(" 503") && body.contains("\"role\":\"starting\"");
    if !status_line.contains(" 200") && !starting {
        return Err(FetchError::NotOk(status_line.to_string()));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(FetchError::Chunked);
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_view_and_failing_detected() {
        let s = serde_json::json!({
            "version": "0.1.0", "role": "leader", "ready": true,
            "views": [
                {"view": "public.a", "state": "idle", "pending_since_seconds": 0.0,
                 "last_end": "2026-11-23T05:00:00Z", "last_outcome": "success", "last_duration_seconds": 0.02,
                 "last_error": null},
                {"view": "public.b", "state": "failed", "pending_since_seconds": 12.5,
                 "last_end": null, "last_error": {"class": "permanent", "sqlstate": "21000", "hint": "x"}},
            ]
        });
        let (text, failing) = render(&s);
        assert!(failing);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[1].starts_with("public.a")
                && lines[1].contains("fresh")
                && lines[1].contains("20ms")
        );
        assert!(
            lines[2].contains("failed")
                && lines[2].contains("stale 12.5s")
                && lines[2].contains("permanent 21000")
        );
        let ok =
            serde_json::json!({"version": "0.1.0", "role": "standby", "ready": true, "views": []});
        assert!(!render(&ok).1);
    }

    #[test]
    fn disconnected_is_a_problem_and_nothing_is_called_fresh() {
        let s = serde_json::json!({
            "version": "0.1.0", "role": "disconnected", "ready": false,
            "views": [{"view": "public.a", "state": "idle", "pending_since_seconds": 0.0,
                       "last_end": null, "last_error": null}]
        });
        let (text, problem) = render(&s);
        assert!(problem, "{text}");
        assert!(
            text.lines()
                .next()
                .unwrap()
                .contains("disconnected from PostgreSQL"),
            "{text}"
        );
        let line = text.lines().nth(1).unwrap();
        assert!(
            !line.split_whitespace().any(|w| w == "fresh") && line.contains("unknown"),
            "{text}"
        );
    }

    /// A standby hears no change and refreshes nothing: it calls no view fresh, and
    /// says the leader's /status has their state (it said "fresh": a review).
    #[test]
    fn a_standby_calls_nothing_fresh() {
        let s = serde_json::json!({
            "version": "0.1.0", "role": "standby", "ready": true,
            "views": [{"view": "public.a", "state": "idle", "pending_since_seconds": 0.0,
                       "last_end": null, "last_error": null}]
        });
        let (text, problem) = render(&s);
        assert!(!problem, "{text}");
        assert!(text.lines().next().unwrap().contains("ask it"), "{text}");
        let line = text.lines().nth(1).unwrap();
        assert!(
            !line.split_whitespace().any(|w| w == "fresh") && line.contains("unknown"),
            "{text}"
        );
    }

    #[test]
    fn not_ready_is_a_problem() {
        let s =
            serde_json::json!({"version": "0.1.0", "role": "leader", "ready": false, "views": []});
        let (text, problem) = render(&s);
        assert!(problem && text.contains("(not ready)"), "{text}");
    }

    #[test]
    fn hostile_view_names_stay_on_their_line() {
        let s = serde_json::json!({
            "version": "0.1.0", "role": "leader", "ready": true,
            "views": [{"view": "inj.\"v\npublic.fake  idle  fresh\r\u{1b}[2K\"", "state": "idle",
                       "pending_since_seconds": 0.0, "last_end": null, "last_error": null}]
        });
        let (text, _) = render(&s);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains('\r') && !text.contains('\u{1b}'), "{text:?}");
    }
}
