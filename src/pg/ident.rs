//! PostgreSQL identifiers: parsing names the way the server does, and quoting every
//! identifier refreshd emits.

use std::fmt;

/// The longest identifier PostgreSQL keeps (`NAMEDATALEN - 1` bytes). Longer ones are
/// silently truncated by the server, which would make refreshd act on another object.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Why a name could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    #[error("empty identifier")]
    Empty,
    #[error("unterminated quoted identifier")]
    Unterminated,
    #[error("identifier {0:?} is longer than {MAX_IDENTIFIER_BYTES} bytes")]
    TooLong(String),
    #[error("unexpected character {0:?}; quote the identifier with double quotes if it is part of the name")]
    Unexpected(char),
    #[error("{0:?} is not schema-qualified: write it as schema.view (for example public.{0})")]
    Unqualified(String),
    #[error("too many dots: expected schema.view")]
    TooManyParts,
    #[error("zero bytes are not allowed in identifiers")]
    Nul,
}

/// A schema-qualified relation name, as the catalog stores it (case preserved after
/// PostgreSQL's folding of unquoted identifiers).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Parses `schema.view` with PostgreSQL's identifier rules: unquoted parts are folded
    /// to lower case, `"Quoted"` parts keep their case and may contain anything but NUL
    /// (a doubled `""` stands for one quote).
    pub fn parse(input: &str) -> Result<Self, IdentError> {
        let parts = parse_parts(input)?;
        match parts.len() {
            1 => Err(IdentError::Unqualified(
                parts.into_iter().next().unwrap_or_default(),
            )),
            2 => {
                let mut it = parts.into_iter();
                let schema = it.next().unwrap_or_default();
                let name = it.next().unwrap_or_default();
                Ok(Self { schema, name })
            }
            _ => Err(IdentError::TooManyParts),
        }
    }

    /// The name quoted for SQL: `"schema"."name"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The name for a person: [`Display`](fmt::Display)'s form with control and
    /// invisible characters escaped ([`escape_display`]), so it stays on one line.
    pub fn shown(&self) -> String {
        escape_display(&self.to_string()).into_owned()
    }
}

/// Whether a character must not reach a person's terminal or a log line as it is:
/// control characters (a newline would start a forged line, ESC a terminal sequence),
/// Unicode line and paragraph separators, and the invisible bidirectional controls
/// that reorder what is shown.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

/// Text for a person (a terminal, a log line, a comment): control and invisible
/// characters as `\n`, `\r`, `\t` or `\u{...}`, and a backslash doubled so the escapes
/// stay unambiguous. Everything else, non-ASCII included, is kept.
pub fn escape_display(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || needs_escape(c)) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A whole line for a person: like [`escape_display`] but a backslash is kept as it is
/// (names in it were escaped already, or it carries a server's message).
pub fn escape_line(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Text made safe inside an SQL `--` comment (and inside a `/* */` one): one line
/// ([`escape_display`]), and no `--`, `/*` or `*/` left to open or close a comment.
pub fn sql_comment(s: &str) -> String {
    let mut out = escape_display(s).into_owned();
    // Repeat until stable: "---" or "*/*/" would otherwise leave a pair behind.
    loop {
        let next = out
            .replace("--", "- -")
            .replace("/*", "/ *")
            .replace("*/", "* /");
        if next == out {
            return out;
        }
        out = next;
    }
}

/// Displays the shortest form that parses back to the same name: `public.attendance`,
/// or `"Sales"."Daily Totals"` where quoting is needed. The control channel payload and
/// the HTTP path are matched against this form (and the fully quoted one).
impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            display_ident(&self.schema),
            display_ident(&self.name)
        )
    }
}

/// Quotes an identifier for SQL, always, so that no name can change the statement.
pub fn quote_ident(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len() + 2);
    out.push('"');
    for c in ident.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// One identifier for a person, on one line: as [`QualifiedName::shown`] shows a part.
pub fn shown_ident(ident: &str) -> String {
    escape_display(&display_ident(ident)).into_owned()
}

/// An identifier as a person would write it: bare when it survives case folding.
fn display_ident(ident: &str) -> String {
    let bare = !ident.is_empty()
        && ident
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && ident
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if bare {
        ident.to_string()
    } else {
        quote_ident(ident)
    }
}

fn parse_parts(input: &str) -> Result<Vec<String>, IdentError> {
    let mut parts = Vec::new();
    let mut chars = input.chars().peekable();
    loop {
        let part = match chars.peek() {
            None => return Err(IdentError::Empty),
            Some('"') => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(IdentError::Unterminated),
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            s.push('"');
                        }
                        Some('"') => break,
                        Some('\0') => return Err(IdentError::Nul),
                        Some(c) => s.push(c),
                    }
                }
                if s.is_empty() {
                    return Err(IdentError::Empty);
                }
                s
            }
            Some(_) => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    let ok = if s.is_empty() {
                        c.is_alphabetic() || c == '_'
                    } else {
                        c.is_alphanumeric() || c == '_' || c == '$'
                    };
                    if !ok {
                        return Err(IdentError::Unexpected(c));
                    }
                    // PostgreSQL folds only ASCII letters in unquoted identifiers.
                    s.push(c.to_ascii_lowercase());
                    chars.next();
                }
                if s.is_empty() {
                    return Err(IdentError::Empty);
                }
                s
            }
        };
        if part.len() > MAX_IDENTIFIER_BYTES {
            return Err(IdentError::TooLong(part));
        }
        parts.push(part);
        match chars.next() {
            None => return Ok(parts),
            Some('.') => continue,
            Some(c) => return Err(IdentError::Unexpected(c)),
        }
    }
}

/// Validates a NOTIFY channel name. Channels are matched exactly as `pg_notify()` sends
/// them (case-sensitive), so refreshd LISTENs on the quoted name.
pub fn validate_channel(channel: &str) -> Result<(), IdentError> {
    if channel.is_empty() {
        return Err(IdentError::Empty);
    }
    if channel.contains('\0') {
        return Err(IdentError::Nul);
    }
    if channel.len() > MAX_IDENTIFIER_BYTES {
        return Err(IdentError::TooLong(channel.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_unquoted_and_keeps_quoted() {
        let n = QualifiedName::parse("Public.Attendance_Stats").unwrap();
        assert_eq!(n, QualifiedName::new("public", "attendance_stats"));
        let n = QualifiedName::parse(r#""Sales"."Daily Totals""#).unwrap();
        assert_eq!(n, QualifiedName::new("Sales", "Daily Totals"));
        assert_eq!(n.quoted(), r#""Sales"."Daily Totals""#);
        assert_eq!(n.to_string(), r#""Sales"."Daily Totals""#);
        let n = QualifiedName::parse(r#"core."we""ird""#).unwrap();
        assert_eq!(n.name, r#"we"ird"#);
        assert_eq!(n.quoted(), r#""core"."we""ird""#);
        assert_eq!(QualifiedName::parse(&n.to_string()).unwrap(), n);
    }

    #[test]
    fn rejects_bad_names() {
        assert!(matches!(
            QualifiedName::parse("attendance"),
            Err(IdentError::Unqualified(_))
        ));
        assert_eq!(QualifiedName::parse("a.b.c"), Err(IdentError::TooManyParts));
        assert_eq!(QualifiedName::parse("a."), Err(IdentError::Empty));
        assert_eq!(QualifiedName::parse(".b"), Err(IdentError::Empty));
        assert_eq!(
            QualifiedName::parse(r#"a."b"#),
            Err(IdentError::Unterminated)
        );
        assert_eq!(QualifiedName::parse(r#"a."""#), Err(IdentError::Empty));
        assert_eq!(
            QualifiedName::parse("a.b; drop table x"),
            Err(IdentError::Unexpected(';'))
        );
        assert_eq!(
            QualifiedName::parse("1a.b"),
            Err(IdentError::Unexpected('1'))
        );
        let long = "x".repeat(64);
        assert!(matches!(
            QualifiedName::parse(&format!("a.{long}")),
            Err(IdentError::TooLong(_))
        ));
        assert!(QualifiedName::parse(&format!("a.{}", "x".repeat(63))).is_ok());
    }

    #[test]
    fn names_for_people_stay_on_one_line() {
        let n = QualifiedName::new("inj", "v\nDROP TABLE inj.canary; --");
        let shown = n.shown();
        assert!(!shown.contains('\n'), "{shown}");
        assert_eq!(shown, r#"inj."v\nDROP TABLE inj.canary; --""#);
        assert_eq!(
            escape_display("a\\b\r\u{1b}[31m\u{202e}é"),
            "a\\\\b\\r\\u{001b}[31m\\u{202e}é"
        );
        assert_eq!(escape_display("plain"), "plain");
    }

    #[test]
    fn sql_comments_cannot_be_closed_or_broken() {
        let c = sql_comment("x */ DROP TABLE t; /* -- \n--- y");
        assert!(
            !c.contains("*/") && !c.contains("/*") && !c.contains("--"),
            "{c}"
        );
        assert!(!c.contains('\n'));
        assert!(!sql_comment("*/*/").contains("*/"));
        assert!(!sql_comment("/*/*").contains("/*"));
    }

    #[test]
    fn channels() {
        assert!(validate_channel("refresh_attendance_stats").is_ok());
        assert!(validate_channel("").is_err());
        assert!(validate_channel(&"c".repeat(64)).is_err());
    }
}
