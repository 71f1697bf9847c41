//! Strict percent-decoding for the text refreshd reads URL-encoded: HTTP paths and query
//! values, and the query of a `postgresql://` URL.

/// Decodes `%XX` sequences with the `percent-encoding` crate. That crate passes a
/// malformed sequence through unchanged (as browsers do), so every `%` is first required
/// to start two hex digits: `%zz`, `%2` and `%+1` are refused (`None`), as is a result
/// that is not UTF-8.
pub fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let well_formed = b
        .iter()
        .enumerate()
        .filter(|&(_, &c)| c == b'%')
        .all(|(i, _)| {
            b.get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
        });
    if !well_formed {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|d| d.into_owned())
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_well_formed_sequences() {
        assert_eq!(decode("public.v").as_deref(), Some("public.v"));
        assert_eq!(decode("").as_deref(), Some(""));
        assert_eq!(
            decode("%22Sales%22.%22Daily%20Totals%22").as_deref(),
            Some(r#""Sales"."Daily Totals""#)
        );
        assert_eq!(decode("%2Ftmp%2fca.pem").as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(decode("%25").as_deref(), Some("%"));
        assert_eq!(decode("a+b").as_deref(), Some("a+b"));
    }

    #[test]
    fn refuses_malformed_sequences() {
        for bad in [
            "%", "%2", "%zz", "%+1", "%-1", "% 1", "a%", "%%41", "%G0", "%C3",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
