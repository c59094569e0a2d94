//! `GET /messages`, `GET /channels/{channel}/messages`, `GET /channels` and `GET /messages/{id}`: reads
//! of what the persister has stored.
//!
//! Diesel is blocking, so every query runs on the blocking pool. Without `limit`, the whole table is
//! streamed in keyset pages (see `stream.rs`): memory stays constant however many rows there are, and
//! a client that stops reading holds no database connection. Every read is cut at the committed
//! watermark (`watermark.rs`).
//!
//! `list.rs` answers the lists (a page, or the whole list through `stream.rs`), `one.rs` one message by
//! id, `channels.rs` the channel list.

mod channels;
mod list;
mod one;
mod stream;
mod watermark;

pub use channels::{channels, ChannelInfo};
pub use list::{list, Scope, MAX_LIMIT, MAX_PAGE_BYTES};
pub use one::one;
