//! The persister against real Redis and Postgres: each test gets its own database and stream key.
#![allow(clippy::unwrap_used)]

mod reading;
mod recovery;
mod redelivery;
mod storing;
