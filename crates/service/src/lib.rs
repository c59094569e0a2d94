//! What every Relay binary runs on, written once: settings ([`settings`]), the process's start and stop
//! ([`run`]), the HTTP server and its health and metrics routes ([`http`]), the metrics registry
//! ([`metrics`]), the one problem response ([`problem`]), retry backoff ([`backoff`]) and Redis
//! connections ([`redis`]). A service crate keeps only its own work.

pub mod backoff;
pub mod connection;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod problem;
pub mod redis;
pub mod run;
pub mod settings;

pub use backoff::Backoff;
pub use problem::Problem;
pub use run::run_service;
pub use settings::defs::{GATEWAY, INGEST, PERSISTER};
pub use settings::{Settings, SettingsError};
