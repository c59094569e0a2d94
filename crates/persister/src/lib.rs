//! The persister: reads the stream through the consumer group `persister`, stores each batch in Postgres
//! in one transaction, and acknowledges entries only after that transaction has committed.

mod batches;
pub mod budget;
pub mod claim;
pub mod consumer;
pub mod group;
pub mod history;
pub mod metrics;
pub mod reading;
pub mod startup;
mod storing;
pub mod test_hooks;
pub mod trim;

pub use startup::Application;
