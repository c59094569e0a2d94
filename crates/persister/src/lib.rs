//! The persister: reads the stream through the consumer group `persister`, stores each batch in Postgres
//! in one transaction, and acknowledges entries only after that transaction has committed.

pub mod consumer;
pub mod group;
pub mod history;
pub mod metrics;
pub mod reading;
pub mod seams;
pub mod startup;
mod storing;

pub use startup::Application;
