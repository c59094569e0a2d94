//! The persister against real Redis and Postgres: each test gets its own database and stream key.

mod helpers;
mod recovery;
mod storing;
