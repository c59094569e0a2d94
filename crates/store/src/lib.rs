//! Relay's Postgres side: the schema, the embedded migrations, the row codec and the queries that
//! ingest-api (reads) and the persister (writes) share. Everything here is blocking Diesel: callers run it
//! on a blocking pool.

pub mod read;
pub mod retention;
pub mod rows;
pub mod schema;
pub mod setup;
pub mod url;
pub mod write;

pub use rows::{JsonText, MessageRow, NewMessage};
pub use setup::{connect_pool, prepare_database, PgPool};
pub use url::with_timeouts;
