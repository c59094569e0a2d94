//! The wire of Relay, shared by every service: the message envelope, the stream-entry codec, the names of
//! the stream, group and fields, and the settings. It knows nothing of actix or Diesel.

pub mod codec;
pub mod message;
pub mod metrics;
pub mod redis_stream;
pub mod settings;
pub mod shutdown;
pub mod stream_id;

pub use codec::{DecodeError, EntryParts, StreamEntry, ENTRY_VERSION};
pub use message::{format_received_at, now_micros, Accepted, Message};
pub use settings::{Settings, SettingsError};
pub use stream_id::{StreamId, StreamIdError};

/// The consumer group through which persister replicas share the stream's work.
pub const PERSISTER_GROUP: &str = "persister";

/// The dead-letter stream of `stream_key`: entries that could not be stored, with the reason.
pub fn dead_letter_key(stream_key: &str) -> String {
    format!("{stream_key}:dead")
}
