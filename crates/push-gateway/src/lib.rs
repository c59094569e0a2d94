//! push-gateway: reads the whole stream (plain `XREAD`, no consumer group, so every replica sees every
//! entry) and pushes each message to every connected WebSocket client; serves the live page at `/`.

pub mod commands;
pub mod ending;
pub mod frames;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod outlet;
pub mod page;
pub mod reader;
pub mod refused;
pub mod replay;
pub mod replay_turns;
pub mod routing;
pub mod session;
pub mod shedding;
pub mod slots;
pub mod startup;
pub mod state;
pub mod test_hooks;
pub mod ws;

pub use startup::Application;
