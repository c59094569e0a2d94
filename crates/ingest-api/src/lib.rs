//! ingest-api: the HTTP front door of Relay. `POST /messages` validates a body and appends it to the Redis
//! Stream (the 202 is given once the entry is in the stream); `GET /messages…` reads what the persister has
//! stored in Postgres.

//!
//! The tree follows a request: `publish/` is the path of a `POST` (body, checks, the append), `read/` the
//! paths of a `GET` (lists, one message, channels, the watermark); `routes.rs` registers and documents
//! both, `startup.rs` wires them to the state they share (`state.rs`).

pub mod auth;
pub mod metrics;
pub mod problem;
pub mod publish;
pub mod read;
pub mod routes;
pub mod startup;
pub mod state;

pub use startup::Application;
