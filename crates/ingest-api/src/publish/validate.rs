//! Checking a request body before anything is written: content type, UTF-8, JSON syntax, nesting depth.

use actix_web::{HttpMessage, HttpRequest};
use serde_json::value::RawValue;

use crate::problem::ApiError;

/// The deepest nesting of arrays and objects a message may have.
pub const MAX_DEPTH: usize = 128;

/// What the `Content-Type` says the body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json`: one JSON value.
    Single,
    /// `application/x-ndjson`: one JSON value per line.
    Batch,
}

/// `application/json` or `application/x-ndjson`, optionally with `charset=utf-8`; anything else is 415.
pub fn body_kind(req: &HttpRequest) -> Result<BodyKind, ApiError> {
    let mime = match req.mime_type() {
        Ok(Some(mime)) => mime,
        _ => return Err(ApiError::UnsupportedMediaType),
    };
    if let Some(charset) = mime.get_param("charset") {
        if !charset.as_str().eq_ignore_ascii_case("utf-8") {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    match (mime.type_().as_str(), mime.subtype().as_str()) {
        ("application", "json") => Ok(BodyKind::Single),
        ("application", "x-ndjson") => Ok(BodyKind::Batch),
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

/// The body as text, or 400 naming the first bad byte.
pub fn utf8(body: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(body).map_err(|e| ApiError::InvalidUtf8(e.valid_up_to()))
}

/// One JSON value, kept as its exact text. The depth check runs first: it is a cheap scan, and it keeps
/// a hostile `[[[[…` from ever reaching the parser.
pub fn json_value(text: &str) -> Result<Box<RawValue>, ApiError> {
    if nesting_exceeds(text.as_bytes(), MAX_DEPTH) {
        return Err(ApiError::TooDeep(MAX_DEPTH));
    }
    serde_json::from_str::<Box<RawValue>>(text)
        .map_err(|e| ApiError::MalformedJson(format!("malformed JSON: {e}")))
}

/// Whether arrays/objects nest deeper than `limit` (a top-level `[]` is depth 1). Brackets inside strings
/// do not count. On text that is not JSON the answer is meaningless, and the parser rejects it anyway.
fn nesting_exceeds(json: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The non-blank lines of an NDJSON batch, as [`ndjson_lines`] counts them, without parsing any: what a
/// rate check needs before the parse is paid for.
pub fn count_lines(text: &str) -> usize {
    text.split('\n')
        .filter(|line| !line.trim().is_empty())
        .count()
}

/// Every non-blank line of an NDJSON batch, validated, in order; the first bad line is a 400 that names it,
/// a line over `max_line_bytes` (`MAX_BODY_BYTES`, the limit of one message) a 413 that names it: a batch
/// is many messages, never a way around the size of one.
pub fn ndjson_lines(
    text: &str,
    max_lines: usize,
    max_line_bytes: usize,
) -> Result<Vec<Box<RawValue>>, ApiError> {
    let mut values = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.len() > max_line_bytes {
            return Err(ApiError::LineTooLarge {
                line: i + 1,
                limit: max_line_bytes,
            });
        }
        if line.trim().is_empty() {
            continue;
        }
        if values.len() == max_lines {
            return Err(ApiError::TooManyLines { limit: max_lines });
        }
        let value = json_value(line).map_err(|e| ApiError::BadLine {
            line: i + 1,
            reason: e.to_string(),
        })?;
        values.push(value);
    }
    if values.is_empty() {
        return Err(ApiError::MalformedJson("the batch has no JSON line".into()));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn nesting_up_to_the_limit_is_accepted_and_one_more_is_not() {
        assert!(json_value(&nested(MAX_DEPTH)).is_ok());
        assert!(matches!(
            json_value(&nested(MAX_DEPTH + 1)),
            Err(ApiError::TooDeep(_))
        ));
        let mixed = format!("{}1{}", r#"{"a":["#.repeat(64), "]}".repeat(64));
        assert!(json_value(&mixed).is_ok());
    }

    #[test]
    fn brackets_inside_strings_do_not_count_as_nesting() {
        let s = format!("\"{}\\\"{}\"", "[".repeat(500), "{".repeat(500));
        assert!(json_value(&s).is_ok());
    }

    #[test]
    fn the_payload_text_is_kept_exactly() {
        let text = r#"{"b": 1, "a": 123456789012345678901234567890, "f": 1e-300, "s": "\u0000"}"#;
        assert_eq!(json_value(text).unwrap().get(), text);
    }

    #[test]
    fn trailing_garbage_and_empty_bodies_are_malformed() {
        for bad in ["", "   ", "{} {}", "{\"a\":1", "nul", "[1,]"] {
            assert!(
                matches!(json_value(bad), Err(ApiError::MalformedJson(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ndjson_names_the_bad_line_and_skips_blank_ones() {
        assert_eq!(
            ndjson_lines("1\n\n  \r\n{\"a\":2}\r\n", 10, 100)
                .unwrap()
                .len(),
            2
        );
        let err = ndjson_lines("1\n2\n{oops\n4", 10, 100).unwrap_err();
        assert!(matches!(err, ApiError::BadLine { line: 3, .. }), "{err:?}");
        assert!(matches!(
            ndjson_lines("1\n2\n3", 2, 100),
            Err(ApiError::TooManyLines { limit: 2 })
        ));
    }

    #[test]
    fn an_ndjson_line_over_the_message_limit_is_named() {
        let err = ndjson_lines("1\n\"12345678\"\n3", 10, 8).unwrap_err();
        assert!(
            matches!(err, ApiError::LineTooLarge { line: 2, limit: 8 }),
            "{err:?}"
        );
        assert_eq!(ndjson_lines("1\n\"123456\"\n3", 10, 8).unwrap().len(), 3);
    }

    /// Structured fuzzing on stable Rust (proptest) of everything a client controls in a body: arbitrary
    /// bytes and text, JSON nested around the depth limit with brackets hidden in strings, NDJSON with bad
    /// and blank lines. Nothing may panic, and each answer must be the right one. Bounded by the number of
    /// cases so it runs in `make test` (`PROPTEST_CASES=100000` for a longer hunt).
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// The real depth of a JSON value (a scalar is 0, `[]` is 1).
        fn depth(v: &serde_json::Value) -> usize {
            match v {
                serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
                serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }

        /// JSON nested `levels` deep, each level an array or an object, with brackets inside strings.
        fn nested() -> impl Strategy<Value = (String, usize)> {
            (
                1usize..200,
                prop::collection::vec(any::<bool>(), 200),
                "[\\[\\]{}\"a]{0,6}",
            )
                .prop_map(|(levels, kinds, noise)| {
                    let noise = serde_json::to_string(&noise).unwrap_or_default();
                    let (mut open, mut close) = (String::new(), String::new());
                    for &object in &kinds[..levels] {
                        if object {
                            open.push_str(&format!("{{{noise}:"));
                            close.insert(0, '}');
                        } else {
                            open.push_str(&format!("[{noise},"));
                            close.insert(0, ']');
                        }
                    }
                    (format!("{open}{noise}{close}"), levels)
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(model::testing::proptest_cases()))]

            #[test]
            fn arbitrary_bytes_never_panic_and_what_is_accepted_is_json_within_the_depth(
                bytes in prop::collection::vec(any::<u8>(), 0..256),
            ) {
                match utf8(&bytes) {
                    Ok(text) => {
                        prop_assert!(std::str::from_utf8(&bytes).is_ok());
                        if let Ok(value) = json_value(text) {
                            prop_assert_eq!(value.get(), text);
                            let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
                            prop_assert!(depth(&parsed) <= MAX_DEPTH);
                        }
                        let _ = ndjson_lines(text, 16, 64);
                    }
                    Err(ApiError::InvalidUtf8(at)) => {
                        prop_assert_eq!(std::str::from_utf8(&bytes).unwrap_err().valid_up_to(), at);
                    }
                    Err(other) => prop_assert!(false, "unexpected {other:?}"),
                }
            }

            #[test]
            fn nesting_is_accepted_exactly_up_to_the_limit((text, levels) in nested()) {
                match json_value(&text) {
                    Ok(_) => prop_assert!(levels <= MAX_DEPTH, "{levels} levels accepted"),
                    Err(ApiError::TooDeep(_)) => prop_assert!(levels > MAX_DEPTH, "{levels} refused"),
                    Err(other) => prop_assert!(false, "{levels} levels: {other:?}"),
                }
            }

            #[test]
            fn an_ndjson_batch_names_its_first_bad_line_or_keeps_every_good_one(
                lines in prop::collection::vec(
                    prop_oneof![
                        any::<i32>().prop_map(|n| n.to_string()),
                        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
                        Just(String::new()),
                        Just("  \r".to_owned()),
                        Just("{oops".to_owned()),
                        "[a-z\\[{\"]{1,8}",
                    ],
                    1..24,
                ),
                crlf in any::<bool>(),
            ) {
                let text = lines.join(if crlf { "\r\n" } else { "\n" });
                let good = |l: &str| serde_json::from_str::<serde_json::Value>(l).is_ok();
                let first_bad = lines.iter().position(|l| !l.trim().is_empty() && !good(l));
                let values = lines.iter().filter(|l| !l.trim().is_empty()).count();
                match ndjson_lines(&text, 1000, 1 << 20) {
                    Ok(kept) => {
                        prop_assert!(first_bad.is_none());
                        prop_assert_eq!(kept.len(), values);
                    }
                    Err(ApiError::BadLine { line, .. }) => prop_assert_eq!(Some(line - 1), first_bad),
                    Err(ApiError::MalformedJson(_)) => prop_assert_eq!(values, 0),
                    Err(other) => prop_assert!(false, "{other:?}"),
                }
            }
        }
    }
}
