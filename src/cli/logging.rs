//! Logs to stderr through `tracing`: text for people, JSON for log shippers; the level
//! from `RUST_LOG` (default `info`). A line logged inside a span carries the span's
//! fields: `refresh{view=.. reason=.. run=.. keyed=.. full=..}` in text, `"span": {..}`
//! in JSON (see `engine::core`'s refresh span, the listener's session, the detector).

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The filter without `RUST_LOG`. The scheduler crate narrates its own life at info;
/// keep refreshd's lines readable.
pub const DEFAULT_FILTER: &str = "info,tokio_postgres=warn";

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat) {
    init_with_default(format, DEFAULT_FILTER)
}

/// [`init`] with another filter for when `RUST_LOG` is not set.
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| OneLine(std::io::stderr()))
        // Colours only on a terminal: journald and log shippers get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        // The event's fields at the top level; the span it happened in (a refresh, the
        // listener's session, the detector) as `span`, with that span's fields.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// stderr for the text format, where one event must stay one line: a name from the
/// catalog or a server's message with a line break in it could otherwise forge log
/// lines. The formatter hands each event over in one `write_all` ending in `\n`; any
/// other line break (and carriage return, vertical tab) in it is written escaped. The
/// JSON format escapes by itself.
struct OneLine<W>(W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.split_last() {
            Some((b'\n', body)) => (body, &b"\n"[..]),
            _ => (buf, &b""[..]),
        };
        if !body.iter().any(|b| matches!(b, b'\n' | b'\r' | 0x0b)) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 8);
        for &b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                0x0b => out.extend_from_slice(b"\\x0b"),
                b => out.push(b),
            }
        }
        out.extend_from_slice(end);
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    #[test]
    fn an_event_stays_one_line() {
        let mut w = super::OneLine(Vec::new());
        w.write_all(b"INFO refreshing view=inj.\"v\nERROR forged\r\"\n")
            .unwrap();
        assert_eq!(
            String::from_utf8(w.0).unwrap(),
            "INFO refreshing view=inj.\"v\\nERROR forged\\r\"\n"
        );
    }
}
