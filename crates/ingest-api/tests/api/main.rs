//! ingest-api against real Redis and Postgres: each test gets its own database and stream key.
#![allow(clippy::unwrap_used)]

mod channels;
mod deadlines;
mod publish;
mod read;
mod round_trip;
mod security;
