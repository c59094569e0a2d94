//! The wire of Relay, shared by every service: the message envelope, the stream-entry codec, the names of
//! the stream, group, fields and every key derived from the stream's. It knows nothing of actix or Diesel.

pub mod channel;
pub mod codec;
pub mod keys;
pub mod message;
pub mod redis_stream;
pub mod resp;
pub mod stream_id;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use channel::{ChannelError, ChannelName, ChannelPattern, DEFAULT_CHANNEL};
pub use codec::{DecodeError, EntryParts, StreamEntry, ENTRY_VERSION};
pub use keys::{dead_letter_key, idempotency_key, idempotency_ledger_keys, PERSISTER_GROUP};
pub use message::{format_received_at, now_micros, Accepted, Message};
pub use stream_id::{StreamId, StreamIdError};
