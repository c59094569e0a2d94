//! The persister against real Redis and Postgres: each test gets its own database and stream key.
#![allow(clippy::unwrap_used)]

mod history;
mod reading;
mod recovery;
mod redelivery;
mod storing;

/// The reply budget a consumer reads these tests' small entries with: `PERSISTER_READ_BYTES`, expecting
/// entries of about 1 KiB (a fresh reader expects the largest `MAX_BODY_BYTES` allows, and reads 31).
fn small_entries() -> persister::group::ReplyBudget {
    persister::group::ReplyBudget::default().expecting(1024)
}
