//! ingest-api: the HTTP front door of Relay. `POST /messages` validates a body and appends it to the Redis
//! Stream (the 202 is given once the entry is in the stream); `GET /messages…` reads what the persister has
//! stored in Postgres.

pub mod auth;
pub mod backlog;
pub mod group_commit;
pub mod idempotency;
pub mod inflight;
pub mod metrics;
pub mod problem;
pub mod rate;
pub mod replicas;
pub mod routes;
pub mod startup;
pub mod state;
pub mod validate;
pub mod watermark;

pub use startup::Application;
