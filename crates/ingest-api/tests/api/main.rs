//! ingest-api against real Redis and Postgres: each test gets its own database and stream key.
#![allow(clippy::unwrap_used)]

mod access;
mod channels;
mod deadlines;
mod limits;
mod openapi;
mod publish;
mod read;
mod read_bounds;
mod round_trip;
mod security;
