//! The names of the consumer group and of every Redis key derived from the stream's. All of a stream's
//! keys are built here, as `<STREAM_KEY>:<suffix>`: in a Redis Cluster they land on the stream's own slot
//! when `STREAM_KEY` carries a hash tag (`{messages}` → `{messages}:dead`), which the idempotency script,
//! touching the stream and its record in one step, requires.

/// The consumer group through which persister replicas share the stream's work.
pub const PERSISTER_GROUP: &str = "persister";

/// The dead-letter stream of `stream_key`: entries that could not be stored, with the reason.
pub fn dead_letter_key(stream_key: &str) -> String {
    format!("{stream_key}:dead")
}

/// The record of an `Idempotency-Key` as sent by `caller` (an API key's identity; `None` when Relay runs
/// without keys): two callers using the same `Idempotency-Key` have two records.
pub fn idempotency_key(stream_key: &str, caller: Option<&str>, key: &str) -> String {
    format!("{stream_key}:idem:{}:{key}", caller.unwrap_or("-"))
}

/// The ledger of `caller`'s `Idempotency-Key` records (a sorted set of them by creation time and a hash
/// of their sizes and total), so one credential's records can be bounded in bytes.
pub fn idempotency_ledger_keys(stream_key: &str, caller: Option<&str>) -> (String, String) {
    let caller = caller.unwrap_or("-");
    (
        format!("{stream_key}:idem-by-time:{caller}"),
        format!("{stream_key}:idem-sizes:{caller}"),
    )
}

/// Whether `stream_key` holds a Redis Cluster hash tag (a non-empty `{…}`), so that every key above
/// shares its slot.
pub fn has_hash_tag(stream_key: &str) -> bool {
    stream_key
        .find('{')
        .and_then(|open| stream_key[open + 1..].find('}'))
        .is_some_and(|len| len > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_keep_the_streams_hash_tag() {
        assert_eq!(dead_letter_key("{messages}"), "{messages}:dead");
        assert_eq!(
            idempotency_key("{messages}", Some("ab12"), "k-1"),
            "{messages}:idem:ab12:k-1"
        );
        assert_ne!(
            idempotency_key("s", Some("a"), "k"),
            idempotency_key("s", Some("b"), "k")
        );
        assert!(has_hash_tag("{messages}") && has_hash_tag("relay{m}"));
        assert!(!has_hash_tag("messages") && !has_hash_tag("{}m"));
    }
}
