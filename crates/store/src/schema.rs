//! The Diesel view of `migrations/`.

diesel::table! {
    messages (stream_ms, stream_seq) {
        stream_ms -> Int8,
        stream_seq -> Int8,
        id -> Uuid,
        received_at -> Timestamptz,
        payload -> Json,
        persisted_at -> Timestamptz,
        channel -> Text,
    }
}

diesel::table! {
    /// One row per channel that holds a message (see the channels migration).
    channels (channel) {
        channel -> Text,
        messages -> Int8,
        last_stream_ms -> Int8,
        last_stream_seq -> Int8,
        last_received_at -> Timestamptz,
    }
}

diesel::table! {
    /// A per-connection temporary table (see `write.rs`): redelivered batches are copied here and then
    /// inserted with `ON CONFLICT DO NOTHING`.
    messages_staging (stream_ms, stream_seq) {
        stream_ms -> Int8,
        stream_seq -> Int8,
        id -> Uuid,
        received_at -> Timestamptz,
        payload -> Json,
        channel -> Text,
    }
}
