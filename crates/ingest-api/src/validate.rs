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
}
